//! A bitmap's parse plan, compiled once per thread and reused for every message with that
//! bitmap.
//!
//! A link carries a handful of bitmaps (one per message kind and acquirer profile), and for
//! one bitmap of one spec the fields, their order and the widths of the fixed ones never
//! change. So the first time a thread meets a (spec, bitmap) pair it flattens the fields
//! into segments: a variable field, then the run of fixed fields after it. Inside a run the
//! fields' offsets are constants, and byte-wise content checks merge across field
//! boundaries: the ten numeric fields DE 3 to DE 25 of an authorization are one digit check
//! over 57 bytes, not ten checks of 2 to 12 bytes with a table lookup and a length dispatch
//! each (callgrind counted about 80 instructions per field on the field-by-field path).
//!
//! A shape checks exactly what the field-by-field parser checks, and so [`Shape::build`] must
//! list exactly the fields that walk reads: every bit set in the bitmap words, whatever the
//! spec's `max_field` (which only decides how many words are read). It only answers "valid,
//! with these offsets" or "not valid"; on "not valid" the field-by-field parser runs again to
//! name the field and offset, so errors are the same either way and cost nothing here.
//!
//! The cache is a small array in thread-local storage (no lock, no atomic, no allocation):
//! parsing stays allocation-free even for the first message of a bitmap.

use std::cell::RefCell;

use super::parse::{check, prefix_value};
use super::spec::{Check, MAX_FIELD, Plan, Spec};

/// Most fields a shape holds; messages with more take the field-by-field path.
const SHAPE_FIELDS: usize = 64;
/// Offsets a shape remembers: one per field and the end.
const TEMPLATE: usize = SHAPE_FIELDS + 1;
/// Shapes kept per thread: two ways in each of sixteen sets (a power of two).
const WAYS: usize = 2;
const SETS: usize = 16;
const _: () = assert!(SETS.is_power_of_two());

/// A variable field and the fixed fields that follow it.
#[derive(Clone, Copy)]
struct Segment {
    /// The variable field opening the segment; 0 (never a data field) when the segment
    /// starts with fixed fields, as the first one may.
    var: u8,
    /// How many fixed fields follow; their offsets are the next entries of [`Shape::rel`].
    fixed: u8,
    /// Their wire bytes together.
    fixed_len: u16,
    /// End (exclusive) of this segment's checks in [`Shape::checks`]; they start where the
    /// previous segment's end.
    checks_end: u8,
}

/// A content check over bytes `from..to` of a run of fixed fields, with the plan of
/// `field`. Byte-wise checks of neighbouring fields of the same kind are one check.
#[derive(Clone, Copy)]
struct RunCheck {
    /// Start, from the start of the run.
    from: u16,
    /// End (exclusive), from the start of the run.
    to: u16,
    /// The first field checked: its plan and unit count check the whole range, which is
    /// sound because the checks that merge ignore the count or, for packed digits, need it
    /// even, as every merged field's is (see [`merges`]).
    field: u8,
}

/// The plan for one bitmap of one spec.
#[derive(Clone, Copy)]
struct Shape {
    /// The field table it was made from ([`Spec::plans_id`]); 0 for an empty slot.
    spec: u64,
    /// The bitmap words, extension bits cleared: the fields present.
    words: [u64; 3],
    /// False when the bitmap has no shape (an undefined field, which the field-by-field
    /// parser reports, or more fields than a shape holds): kept so it is not tried again.
    usable: bool,
    /// Used entries of `segments`.
    segments_len: u8,
    /// Last use ([`Cache::clock`]), for replacing the least recently used way of a set.
    used: u64,
    segments: [Segment; SHAPE_FIELDS],
    /// Offset of each fixed field from the start of its run, in field order.
    rel: [u16; SHAPE_FIELDS],
    /// Offsets of a valid message read with this shape, refreshed whenever a run or the end
    /// moved. Only the run starts are relied on: a run that starts where the template's
    /// did has all its offsets where the template has them (they are constants from its
    /// start). Variable fields' offsets are always written afresh (see [`Shape::read`]).
    template: [u16; TEMPLATE],
    checks: [RunCheck; SHAPE_FIELDS],
}

impl Shape {
    const EMPTY: Shape = Shape {
        spec: 0,
        words: [0; 3],
        usable: false,
        segments_len: 0,
        used: 0,
        segments: [Segment {
            var: 0,
            fixed: 0,
            fixed_len: 0,
            checks_end: 0,
        }; SHAPE_FIELDS],
        rel: [0; SHAPE_FIELDS],
        template: [0; TEMPLATE],
        checks: [RunCheck {
            from: 0,
            to: 0,
            field: 0,
        }; SHAPE_FIELDS],
    };

    /// The shape of `words` in `spec`, unusable when it cannot have one.
    fn of(spec: &Spec, words: [u64; 3]) -> Shape {
        #[cfg(test)]
        tests::BUILDS.with(|b| b.set(b.get() + 1));
        Shape::build(spec, words).unwrap_or(Shape {
            spec: spec.plans_id,
            words,
            ..Shape::EMPTY
        })
    }

    /// Flattens the fields of `words`; `None` when a field is undefined or the bitmap is
    /// beyond what a shape holds.
    fn build(spec: &Spec, words: [u64; 3]) -> Option<Shape> {
        let mut s = Shape::EMPTY;
        s.spec = spec.plans_id;
        s.words = words;
        s.usable = true;
        let mut fields = 0usize;
        let mut fixed_fields = 0usize;
        let mut checks = 0usize;
        // The current segment, and where its checks start.
        let mut seg: Option<usize> = None;
        let mut seg_checks = 0usize;
        // Every bit the words can hold, as the field-by-field walk reads them: `max_field`
        // only decided which bitmap words were read, and it is not in the cache key (a
        // clone can change it and keep `plans_id`).
        for n in 2..=MAX_FIELD {
            let (w, m) = super::message::bit(n);
            if words[w] & m == 0 {
                continue;
            }
            let p = spec.plans.get(n).filter(|p| p.defined)?;
            if fields == SHAPE_FIELDS {
                return None;
            }
            fields += 1;
            let field = u8::try_from(n).ok()?;
            if p.prefix_bytes > 0 || seg.is_none() {
                let i = seg.map_or(0, |i| i + 1);
                *s.segments.get_mut(i)? = Segment {
                    var: if p.prefix_bytes > 0 { field } else { 0 },
                    fixed: 0,
                    fixed_len: 0,
                    checks_end: checks as u8,
                };
                seg = Some(i);
                seg_checks = checks;
                if p.prefix_bytes > 0 {
                    continue;
                }
            }
            let sg = s.segments.get_mut(seg?)?;
            let from = sg.fixed_len;
            let to = u16::try_from(u32::from(from) + p.fixed_wire).ok()?;
            sg.fixed += 1;
            sg.fixed_len = to;
            *s.rel.get_mut(fixed_fields)? = from;
            fixed_fields += 1;
            if p.check != Check::None {
                let merge = checks > seg_checks
                    && s.checks
                        .get(checks - 1)
                        .is_some_and(|last| extends(last, from, p, &spec.plans));
                if merge {
                    s.checks.get_mut(checks - 1)?.to = to;
                } else {
                    *s.checks.get_mut(checks)? = RunCheck { from, to, field };
                    checks += 1;
                }
            }
            s.segments.get_mut(seg?)?.checks_end = checks as u8;
        }
        s.segments_len = seg.map_or(0, |i| i + 1) as u8;
        Some(s)
    }

    /// Checks the fields of `buf` from `pos` on and writes their offsets into `starts`;
    /// `None` at the first thing wrong. Returns the number of fields.
    ///
    /// The offsets start as a copy of the last valid message's with this bitmap (one
    /// fixed-size copy); only the runs that moved, because a variable field before them
    /// changed length, are rewritten. On a link where the PAN and acquirer lengths repeat,
    /// that is none of them.
    #[inline]
    fn read(
        &mut self,
        plans: &[Plan; 256],
        buf: &[u8],
        mut pos: usize,
        starts: &mut [u16],
    ) -> Option<usize> {
        *starts.first_chunk_mut::<TEMPLATE>()? = self.template;
        let mut moved = false;
        let mut k = 0usize;
        let mut rel = 0usize;
        let mut checks_from = 0usize;
        for seg in self.segments.get(..usize::from(self.segments_len))? {
            if seg.var != 0 {
                let p = &plans[usize::from(seg.var)];
                let body = pos + usize::from(p.prefix_bytes);
                let len = prefix_value(buf.get(pos..body)?, p.prefix)?;
                if len > p.max {
                    return None;
                }
                let end = body + p.wire_len(len as usize);
                if !check(p, buf.get(body..end)?, len as usize) {
                    return None;
                }
                *starts.get_mut(k)? = pos as u16;
                k += 1;
                pos = end;
            }
            let run = buf.get(pos..pos + usize::from(seg.fixed_len))?;
            let checks_end = usize::from(seg.checks_end);
            for c in self.checks.get(checks_from..checks_end)? {
                let p = &plans[usize::from(c.field)];
                let v = run.get(usize::from(c.from)..usize::from(c.to))?;
                if !check(p, v, p.max as usize) {
                    return None;
                }
            }
            checks_from = checks_end;
            let fixed = usize::from(seg.fixed);
            // Offsets fit in u16 (frames over 65535 bytes are refused before this).
            let base = pos as u16;
            if fixed > 0 && self.template.get(k) != Some(&base) {
                moved = true;
                let out = starts.get_mut(k..k + fixed)?;
                for (s, r) in out.iter_mut().zip(self.rel.get(rel..rel + fixed)?) {
                    *s = base.wrapping_add(*r);
                }
            }
            k += fixed;
            rel += fixed;
            pos += usize::from(seg.fixed_len);
        }
        *starts.get_mut(k)? = pos as u16;
        if pos != buf.len() {
            return None;
        }
        // Only a valid message becomes the template.
        if moved || self.template.get(k) != Some(&(pos as u16)) {
            self.template = *starts.first_chunk::<TEMPLATE>()?;
        }
        Some(k)
    }
}

/// True when fixed field `p`, starting at `from` in its run, can join the check `last` of
/// the same run: it starts where `last` ends, and both have the same check, one that merges.
fn extends(last: &RunCheck, from: u16, p: &Plan, plans: &[Plan; 256]) -> bool {
    let first = &plans[usize::from(last.field)];
    last.to == from && merges(p) && merges(first) && first.check == p.check
}

/// True for a fixed field whose check holds for a byte string exactly when it holds for
/// each of its parts, so that neighbouring fields of the same check are checked as one.
/// Packed digits qualify only when even in number: an odd count has a pad nibble that the
/// check must find at one end of the field.
fn merges(p: &Plan) -> bool {
    match p.check {
        Check::AsciiDigits | Check::Hex | Check::EbcdicDigits => true,
        Check::BcdDigits => p.max.is_multiple_of(2),
        _ => false,
    }
}

/// One thread's shapes.
struct Cache {
    /// `WAYS` shapes per set.
    shapes: [Shape; WAYS * SETS],
    /// Per set, the last bitmap that missed while its set was full: (spec, words).
    ///
    /// A full set takes in a bitmap only when it misses twice in a row there. Otherwise
    /// more bitmaps than a set holds, taking turns, would each replace a shape and be
    /// replaced before their next message: a build at every message, dearer than the
    /// field-by-field walk it is meant to beat (`cargo bench --bench codec -- parse_mix`
    /// measured that on the 16 vectors before this filter). Now they take the walk, at its
    /// cost, while the shapes already in the set keep serving theirs.
    seen: [(u64, [u64; 3]); SETS],
    /// Use clock for replacing the least recently used way. 64 bits so it never wraps: after
    /// a wrap the older way would look newer and the hot one would be replaced.
    clock: u64,
}

thread_local! {
    /// This thread's shapes.
    static SHAPES: RefCell<Cache> = const {
        RefCell::new(Cache {
            shapes: [Shape::EMPTY; WAYS * SETS],
            seen: [(0, [0; 3]); SETS],
            clock: 0,
        })
    };
}

/// Parses the fields after the bitmap with the shape of `words`, writing their offsets
/// (and the end) into `starts`. `Some(count)` when every field is valid and the frame ends
/// with the last one; `None` when anything is wrong or the bitmap has no shape, and the
/// caller parses field by field.
#[inline]
pub(crate) fn parse_fields(
    spec: &Spec,
    words: [u64; 3],
    buf: &[u8],
    pos: usize,
    starts: &mut [u16],
) -> Option<usize> {
    let key = spec.plans_id;
    let set = set_of(key, words);
    SHAPES.with(|cell| {
        let mut cache = cell.try_borrow_mut().ok()?;
        let Cache {
            shapes,
            seen,
            clock,
        } = &mut *cache;
        *clock += 1;
        let ways = shapes.get_mut(set * WAYS..set * WAYS + WAYS)?;
        let way = match ways.iter().position(|s| s.spec == key && s.words == words) {
            Some(hit) => hit,
            None => admit(spec, words, ways, seen.get_mut(set)?)?,
        };
        let shape = ways.get_mut(way)?;
        shape.used = *clock;
        if !shape.usable {
            return None;
        }
        shape.read(&spec.plans, buf, pos, starts)
    })
}

/// A miss: builds the shape of `words` into an empty way of its set, or into the least
/// recently used one when `words` missed there last time too (see [`Cache::seen`]); `None`
/// when it is left to the field-by-field walk. Kept out of line: the hit path is the hot one.
#[cold]
#[inline(never)]
fn admit(
    spec: &Spec,
    words: [u64; 3],
    ways: &mut [Shape],
    seen: &mut (u64, [u64; 3]),
) -> Option<usize> {
    let key = spec.plans_id;
    let way = match ways.iter().position(|s| s.spec == 0) {
        Some(empty) => empty,
        None if *seen == (key, words) => {
            *seen = (0, [0; 3]);
            (0..ways.len()).min_by_key(|&i| ways.get(i).map_or(0, |s| s.used))?
        }
        None => {
            *seen = (key, words);
            return None;
        }
    };
    *ways.get_mut(way)? = Shape::of(spec, words);
    Some(way)
}

/// The set a bitmap's shape lives in: a multiplicative hash of its words and spec.
fn set_of(key: u64, words: [u64; 3]) -> usize {
    let h = (words[0] ^ words[1].rotate_left(21) ^ words[2].rotate_left(42) ^ key)
        .wrapping_mul(0x9E37_79B9_7F4A_7C15);
    // The top bits of a multiplicative hash are its best mixed.
    (h >> (64 - SETS.ilog2())) as usize
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use bytes::Bytes;

    use super::*;
    use crate::iso8583::parse::parse_field_by_field;
    use crate::iso8583::{BitmapEncoding, Encoding, FieldSpec, Kind, Message, PrefixEncoding};
    use crate::pan::test_pan;

    /// An authorization as acquirers send it: a PAN, ten numeric fields in a row, a second
    /// variable field, text fields, a currency.
    fn authorization(spec: &'static Spec) -> Bytes {
        let mut m = Message::new(spec, b"0100").unwrap();
        let pan = test_pan("497010");
        let fields: [(usize, &[u8]); 16] = [
            (2, pan.as_bytes()),
            (3, b"000000"),
            (4, b"000000012345"),
            (7, b"1126143015"),
            (11, b"000123"),
            (12, b"143015"),
            (13, b"1126"),
            (14, b"2812"),
            (18, b"5734"),
            (22, b"812"),
            (25, b"59"),
            (32, b"123456"),
            (37, b"123456789012"),
            (41, b"TERM0001"),
            (42, b"SHOP00000000001"),
            (49, b"978"),
        ];
        for (n, v) in fields {
            m.set(n, v).unwrap();
        }
        m.pack()
    }

    thread_local! {
        /// Shapes built on this thread.
        pub(super) static BUILDS: Cell<u64> = const { Cell::new(0) };
    }

    /// The cached shape of `frame`'s bitmap on this thread, if any.
    fn cached(spec: &Spec, frame: &Message) -> Option<Shape> {
        let words = frame.present;
        SHAPES.with(|c| {
            c.borrow()
                .shapes
                .iter()
                .find(|s| s.spec == spec.plans_id && s.words == words)
                .copied()
        })
    }

    #[test]
    fn neighbouring_numeric_fields_are_checked_as_one_run() {
        let spec = Spec::iso87ascii();
        let m = Message::parse(spec, authorization(spec)).unwrap();
        let shape = cached(spec, &m).expect("the parse made a shape");
        assert!(shape.usable);
        let segments = &shape.segments[..usize::from(shape.segments_len)];
        let fields: usize = segments
            .iter()
            .map(|s| usize::from(s.fixed) + usize::from(s.var != 0))
            .sum();
        assert_eq!(fields, 16);
        // DE 2 opens the first segment, DE 32 the second.
        assert_eq!(shape.segments_len, 2);
        // DE 3..25 are one digit check; DE 37, 41, 42 and 49 (text) need none.
        assert_eq!(shape.segments[0].checks_end, 1);
        assert_eq!(shape.segments[1].checks_end, 1);
        assert_eq!((shape.checks[0].from, shape.checks[0].to), (0, 57));
    }

    #[test]
    fn a_message_read_from_its_shape_matches_the_field_by_field_walk() {
        for spec in [Spec::iso87ascii(), Spec::iso87binary()] {
            let frame = authorization(spec);
            let slow = parse_field_by_field(spec, frame.clone()).unwrap();
            for _ in 0..3 {
                let fast = Message::parse(spec, frame.clone()).unwrap();
                assert_eq!(fast.layout.starts, slow.layout.starts, "{}", spec.name);
                assert_eq!(fast.present, slow.present);
                assert_eq!(fast.layout.count, slow.layout.count);
            }
        }
    }

    #[test]
    fn a_variable_field_that_changes_length_moves_the_runs_after_it() {
        let spec = Spec::iso87ascii();
        // One bitmap, PANs of 16, 19, 16 and 13 digits: each message's fixed runs start
        // somewhere else than the template's from the message before.
        for len in [16, 19, 16, 13] {
            let mut m = parse_field_by_field(spec, authorization(spec)).unwrap();
            let pan = crate::cards::vpan::random_luhn("497010", len);
            m.set(2, pan.as_bytes()).unwrap();
            let frame = m.pack();
            let slow = parse_field_by_field(spec, frame.clone()).unwrap();
            let fast = Message::parse(spec, frame).unwrap();
            let count = slow.layout.count;
            assert_eq!(
                fast.layout.starts[..=count],
                slow.layout.starts[..=count],
                "{len}"
            );
        }
    }

    #[test]
    fn a_bad_digit_found_by_a_run_check_is_reported_at_its_own_field() {
        let spec = Spec::iso87ascii();
        let good = authorization(spec);
        Message::parse(spec, good.clone()).unwrap();
        // DE 11 is the fifth field of the run DE 3..25.
        let m = parse_field_by_field(spec, good.clone()).unwrap();
        let at = m.raw(11).unwrap().as_ptr() as usize - good.as_ptr() as usize;
        let mut bad = good.to_vec();
        bad[at + 2] = b'X';
        let bad = Bytes::from(bad);
        let err = Message::parse(spec, bad.clone()).unwrap_err();
        assert_eq!(err.field(), Some(11));
        assert_eq!(err, parse_field_by_field(spec, bad).unwrap_err());
    }

    /// An empty dialect with an ASCII MTI and hex bitmaps, naming up to `max_field` fields.
    fn ascii_spec(max_field: usize) -> Spec {
        let mti = FieldSpec::fixed(Kind::N, Encoding::Ascii, 4);
        Spec::empty("test", mti, BitmapEncoding::HexAscii, max_field)
    }

    #[test]
    fn a_spec_changed_after_a_clone_never_reads_with_the_original_s_shapes() {
        let mut spec = ascii_spec(64);
        spec.set_field(
            3,
            "processing code",
            FieldSpec::fixed(Kind::N, Encoding::Ascii, 6),
        );
        spec.set_field(11, "stan", FieldSpec::fixed(Kind::N, Encoding::Ascii, 6));
        let old = spec.clone().leak();
        let frame = Bytes::from_static(b"01002020000000000000000000123456");
        assert!(Message::parse(old, frame.clone()).is_ok());
        // The same dialect with DE 11 made variable: the same bytes are no longer valid.
        let ll = FieldSpec::var(Kind::N, Encoding::Ascii, 2, PrefixEncoding::Ascii, 6);
        spec.set_field(11, "stan", ll);
        let new = spec.leak();
        assert_eq!(
            Message::parse(new, frame.clone()).unwrap_err(),
            parse_field_by_field(new, frame.clone()).unwrap_err()
        );
        assert!(Message::parse(old, frame).is_ok());
    }

    #[test]
    fn fields_above_max_field_are_read_as_the_field_by_field_walk_reads_them() {
        let mut spec = ascii_spec(16);
        spec.set_field(3, "x", FieldSpec::fixed(Kind::N, Encoding::Ascii, 1));
        let spec = spec.leak();
        // DE 3 and DE 20, which the spec does not define (and which is above max_field).
        let frame = Bytes::from_static(b"010020001000000000005");
        let slow = parse_field_by_field(spec, frame.clone()).unwrap_err();
        for _ in 0..2 {
            assert_eq!(Message::parse(spec, frame.clone()).unwrap_err(), slow);
        }
    }

    #[test]
    fn more_bitmaps_than_a_set_holds_taking_turns_are_walked_not_rebuilt_each_time() {
        let spec = Spec::iso87ascii();
        // Messages of fixed numeric fields only, one per subset of these, grouped by the
        // set their bitmap falls in.
        let pool = [3usize, 4, 7, 11, 12, 13, 18, 25];
        let mut by_set: Vec<Vec<Bytes>> = vec![Vec::new(); SETS];
        for subset in 1u32..(1 << pool.len()) {
            let mut m = Message::new(spec, b"0100").unwrap();
            for (i, &n) in pool.iter().enumerate() {
                if subset & (1 << i) != 0 {
                    let len = spec.field(n).unwrap().max_len as usize;
                    m.set(n, "7".repeat(len).as_bytes()).unwrap();
                }
            }
            let frame = m.pack();
            let words = parse_field_by_field(spec, frame.clone()).unwrap().present;
            by_set[set_of(spec.plans_id, words)].push(frame);
        }
        let turns: Vec<Bytes> = by_set
            .into_iter()
            .find(|frames| frames.len() > WAYS)
            .unwrap()
            .into_iter()
            .take(WAYS + 1)
            .collect();
        let before = BUILDS.with(Cell::get);
        let rounds = 6;
        for _ in 0..rounds {
            for frame in &turns {
                let slow = parse_field_by_field(spec, frame.clone()).unwrap();
                let fast = Message::parse(spec, frame.clone()).unwrap();
                assert_eq!(fast.layout.starts, slow.layout.starts);
            }
        }
        // Without the second-miss filter, least-recently-used replacement would build a
        // shape at every parse: the bitmaps come back in the order that evicts each next.
        let builds = BUILDS.with(Cell::get) - before;
        assert!(builds <= (WAYS + rounds) as u64, "{builds} shapes built");
    }

    #[test]
    fn a_bitmap_with_more_fields_than_a_shape_holds_is_walked_field_by_field() {
        let spec = Spec::iso87ascii();
        let mut m = Message::new(spec, b"0100").unwrap();
        let mut set = 0;
        for n in (2..=128).filter(|&n| n != 65) {
            let Some(f) = spec.field(n) else { continue };
            let len = match f.length {
                crate::iso8583::Length::Fixed => f.max_len as usize,
                crate::iso8583::Length::Var { .. } => 2,
            };
            let value = match (f.kind, f.encoding) {
                (_, Encoding::Binary | Encoding::HexAscii) => "00".repeat(len),
                (Kind::N | Kind::Z, _) => "1".repeat(len),
                (Kind::Xn, _) => format!("C{}", "1".repeat(len - 1)),
                _ => "A".repeat(len),
            };
            m.set(n, value.as_bytes()).unwrap();
            set += 1;
        }
        assert!(set > SHAPE_FIELDS, "only {set} fields");
        let frame = m.pack();
        let slow = parse_field_by_field(spec, frame.clone()).unwrap();
        for _ in 0..2 {
            let fast = Message::parse(spec, frame.clone()).unwrap();
            assert_eq!(fast.layout.starts, slow.layout.starts);
        }
        let shape = cached(spec, &slow).expect("the parse cached the verdict");
        assert!(!shape.usable);
    }
}
