//! One ISO 8583 message as the switch sees it: the received bytes plus where each field is.
//!
//! Zero copy by construction: a [`Message`] keeps the frame's [`Bytes`] and a fixed table of
//! field offsets (no allocation per field, no `Bytes::slice` refcount traffic per field).
//! Accessors decode on demand into [`FieldText`], which borrows the frame when the wire is
//! already text (ASCII specs) and decodes into an inline buffer otherwise (BCD, EBCDIC,
//! binary shown as hex). Edits (a response's MTI and DE 39, a PAN swap) are recorded beside
//! the untouched frame in one small arena; [`Message::pack_into`](super::pack) copies the
//! unchanged runs of fields back verbatim and encodes only what changed.

use std::fmt;
use std::ops::Deref;

use bytes::Bytes;

use super::encoding::{EBCDIC_TO_LATIN1, hex_digit};
use super::pack::{EditError, encode_field};
use super::spec::{Encoding, FieldSpec, Kind, MAX_FIELD, Pad, Spec};
use crate::pan::{Masked, Pan, PanError};

/// Where field `n` (1-based) sits in a three-word bitmap, most significant bit first, the
/// same order as on the wire: (word, mask).
#[inline(always)]
pub(crate) const fn bit(n: usize) -> (usize, u64) {
    let i = n.wrapping_sub(1);
    ((i / 64) % 3, 1u64 << (63 - (i % 64)))
}

/// The fields whose bits `mask` has set, in order. Bit 1 (the secondary bitmap's marker)
/// is never set in a message's `present`.
fn fields_of(mask: [u64; 3]) -> impl Iterator<Item = usize> {
    mask.into_iter().enumerate().flat_map(|(w, mut bits)| {
        std::iter::from_fn(move || {
            if bits == 0 {
                return None;
            }
            // Field 1 + 64 w is the word's top bit.
            let from_top = bits.leading_zeros() as usize;
            bits &= !(1u64 << (63 - from_top));
            Some(w * 64 + from_top + 1)
        })
    })
}

/// How many fields of `mask` come before field `n`: the slot of `n` in the offset table.
#[inline(always)]
pub(crate) fn rank(mask: &[u64; 3], n: usize) -> usize {
    let i = n.wrapping_sub(1);
    let (w, b) = ((i / 64) % 3, i % 64);
    let mut r = 0u32;
    for v in mask.iter().take(w) {
        r += v.count_ones();
    }
    let before = if b == 0 { 0 } else { mask[w] >> (64 - b) };
    (r + before.count_ones()) as usize
}

/// Field positions found by the parser; shared with the partial-parse recovery path.
#[derive(Clone)]
pub(crate) struct Layout {
    /// The MTI as four ASCII digits, whatever its wire encoding.
    pub mti: [u8; 4],
    /// Fields present on the wire (bitmap-extension bits excluded).
    pub mask: [u64; 3],
    /// `starts[k]`: offset of the k-th present field (its length prefix included);
    /// `starts[count]` is where the last one ends.
    pub starts: [u16; MAX_FIELD + 2],
    /// Fields completely parsed so far.
    pub count: usize,
}

impl Layout {
    pub(crate) const fn new() -> Layout {
        Layout {
            mti: [0; 4],
            mask: [0; 3],
            starts: [0; MAX_FIELD + 2],
            count: 0,
        }
    }
}

/// A parsed (or built) ISO 8583 message. Cheap to keep: one `Bytes`, a small offset
/// table, and an arena that stays unallocated until the first edit.
#[derive(Clone)]
pub struct Message {
    /// The dialect the bytes are in; accessors need it to decode.
    pub(crate) spec: &'static Spec,
    /// The frame as received (without framing header); empty for a built message.
    pub(crate) buf: Bytes,
    /// Offsets of the received fields.
    pub(crate) layout: Layout,
    /// MTI now (after [`Message::set_mti`]).
    pub(crate) mti: [u8; 4],
    /// Fields present now (after edits).
    pub(crate) present: [u64; 3],
    /// Edits as records `[field u8][len u16 LE][wire bytes]`, the last one for a field wins;
    /// `len == u16::MAX` marks a removal. Empty (no allocation) until the first edit.
    pub(crate) edits: Vec<u8>,
}

const REMOVED: u16 = u16::MAX;

/// The fields that carry card-verification data: the tracks (2, 3, 1), the PIN block, the
/// chip data. No answer echoes them, and none is kept once the authorization is decided
/// (PCI DSS 3.3.1), encrypted or not.
pub const CARD_VERIFICATION_DATA: [usize; 5] = [35, 36, 45, 52, 55];

/// True for the MTI of a repeat: an odd last digit (see [`Message::is_repeat`]).
pub fn is_repeat_mti(mti: &[u8; 4]) -> bool {
    matches!(mti[3], b'1' | b'3' | b'5' | b'7' | b'9')
}

impl Message {
    pub(crate) fn from_parts(spec: &'static Spec, buf: Bytes, layout: Layout) -> Message {
        Message {
            spec,
            buf,
            mti: layout.mti,
            present: layout.mask,
            layout,
            edits: Vec::new(),
        }
    }

    /// An empty message of type `mti` (four ASCII digits), to fill with [`Message::set`].
    pub fn new(spec: &'static Spec, mti: &[u8; 4]) -> Result<Message, EditError> {
        let mut m = Message::from_parts(spec, Bytes::new(), Layout::new());
        m.set_mti(mti)?;
        Ok(m)
    }

    /// The spec this message is read and written with.
    pub fn spec(&self) -> &'static Spec {
        self.spec
    }

    /// The received frame, unchanged by later edits.
    pub fn frame(&self) -> &Bytes {
        &self.buf
    }

    /// Message type indicator as four ASCII digits (e.g. `*b"0100"`).
    pub fn mti(&self) -> [u8; 4] {
        self.mti
    }

    /// Replaces the MTI (e.g. `0110` for the response to a `0100`).
    pub fn set_mti(&mut self, mti: &[u8; 4]) -> Result<(), EditError> {
        if !mti.iter().all(u8::is_ascii_digit) {
            return Err(EditError::BadValue { field: 0 });
        }
        self.mti = *mti;
        Ok(())
    }

    /// True for a repeat (0101, 0121, 0401 ...): an odd last MTI digit, ISO 8583:1987's
    /// repeat of the acquirer's, the issuer's or another originator's message.
    pub fn is_repeat(&self) -> bool {
        is_repeat_mti(&self.mti)
    }

    /// Marks a message sent before as its repeat (0100 → 0101, 0420 → 0421: ISO 8583:1987's
    /// last MTI digit, "repeat" for the same originator), as it goes again when its first
    /// telling may have reached the host: the host then answers what it answered the first
    /// time rather than applying it again. A repeat already, or an MTI of another shape, is
    /// left as it is.
    pub fn mark_repeat(&mut self) {
        if self.mti[3] == b'0' {
            self.mti[3] = b'1';
        }
    }

    /// True when field `n` is present.
    #[inline]
    pub fn has(&self, n: usize) -> bool {
        if !(2..=MAX_FIELD).contains(&n) {
            return false;
        }
        let (w, m) = bit(n);
        self.present[w] & m != 0
    }

    /// Field numbers present, in order: read off the bitmaps a word at a time, not asked
    /// field number by field number.
    pub fn field_numbers(&self) -> impl Iterator<Item = usize> + use<> {
        fields_of(self.present)
    }

    /// Field `n` as it is on the wire, length prefix included.
    pub(crate) fn wire(&self, n: usize) -> Option<&[u8]> {
        if !self.has(n) {
            return None;
        }
        if !self.edits.is_empty() {
            match self.edit(n) {
                Some(Some(w)) => return Some(w),
                Some(None) => return None,
                None => {}
            }
        }
        self.received_wire(n)
    }

    /// Field `n` as received, length prefix included (ignores edits).
    #[inline]
    pub(crate) fn received_wire(&self, n: usize) -> Option<&[u8]> {
        let (w, m) = bit(n);
        if self.layout.mask[w] & m == 0 {
            return None;
        }
        let r = rank(&self.layout.mask, n);
        let start = usize::from(*self.layout.starts.get(r)?);
        let end = usize::from(*self.layout.starts.get(r + 1)?);
        self.buf.get(start..end)
    }

    /// The last edit of field `n`: `Some(Some(wire))` when set, `Some(None)` when removed,
    /// `None` when not edited.
    pub(crate) fn edit(&self, n: usize) -> Option<Option<&[u8]>> {
        let mut found = None;
        let mut rest = self.edits.as_slice();
        while let [f, l0, l1, tail @ ..] = rest {
            let len = u16::from_le_bytes([*l0, *l1]);
            let take = if len == REMOVED { 0 } else { usize::from(len) };
            let (bytes, after) = tail.split_at(take.min(tail.len()));
            if usize::from(*f) == n {
                found = Some(if len == REMOVED { None } else { Some(bytes) });
            }
            rest = after;
        }
        found
    }

    /// Field `n`'s content bytes exactly as on the wire, without the length prefix
    /// (BCD stays packed, EBCDIC stays EBCDIC). Zero copy for received fields.
    pub fn raw(&self, n: usize) -> Option<&[u8]> {
        let f = self.spec.field(n)?;
        self.wire(n)?.get(f.prefix_bytes()..)
    }

    /// Field `n` as a `Bytes` sharing the frame (one refcount increment); `None` for an
    /// absent or edited field.
    pub fn raw_bytes(&self, n: usize) -> Option<Bytes> {
        if !self.edits.is_empty() && self.edit(n).is_some() {
            return None;
        }
        let f = self.spec.field(n)?;
        let wire = self.received_wire(n)?;
        let base = wire.as_ptr() as usize - self.buf.as_ptr() as usize;
        Some(self.buf.slice(base + f.prefix_bytes()..base + wire.len()))
    }

    /// Field `n` decoded: ASCII digits for numerics (also when the wire is BCD), text as
    /// text (EBCDIC translated), binary as upper-case hex. Borrows the frame when the wire
    /// is already in that form.
    pub fn text(&self, n: usize) -> Option<FieldText<'_>> {
        let f = self.spec.field(n)?;
        let wire = self.wire(n)?;
        Some(decode(f, wire))
    }

    /// Sets field `n` from its decoded form (what [`Message::text`] returns: digits for
    /// numerics, text, hex for binary). Validated and encoded now, so packing cannot fail.
    pub fn set(&mut self, n: usize, value: &[u8]) -> Result<(), EditError> {
        if !(2..=self.spec.max_field).contains(&n) || (n == 65 && self.spec.max_field > 128) {
            return Err(EditError::NoSuchField { field: n as u16 });
        }
        let f = self
            .spec
            .field(n)
            .ok_or(EditError::NoSuchField { field: n as u16 })?;
        let start = self.edits.len();
        if self.edits.is_empty() {
            self.edits.reserve(256);
        }
        self.edits.extend_from_slice(&[n as u8, 0, 0]);
        match encode_field(f, n, value, &mut self.edits) {
            Ok(()) => {}
            Err(e) => {
                self.edits.truncate(start);
                return Err(e);
            }
        }
        let len = self.edits.len() - start - 3;
        let Ok(len16) = u16::try_from(len) else {
            self.edits.truncate(start);
            return Err(EditError::TooLong { field: n as u16 });
        };
        if len16 == REMOVED {
            self.edits.truncate(start);
            return Err(EditError::TooLong { field: n as u16 });
        }
        let [a, b] = len16.to_le_bytes();
        if let Some(hdr) = self.edits.get_mut(start + 1..start + 3) {
            hdr.copy_from_slice(&[a, b]);
        }
        let (w, m) = bit(n);
        self.present[w] |= m;
        Ok(())
    }

    /// Removes field `n` (a no-op when absent).
    pub fn remove(&mut self, n: usize) {
        if !self.has(n) {
            return;
        }
        let [a, b] = REMOVED.to_le_bytes();
        self.edits.extend_from_slice(&[n as u8, a, b]);
        let (w, m) = bit(n);
        self.present[w] &= !m;
    }

    /// Keeps only the fields for which `keep` is true (e.g. the fields a response echoes).
    pub fn retain(&mut self, mut keep: impl FnMut(usize) -> bool) {
        for n in 2..=MAX_FIELD {
            if self.has(n) && !keep(n) {
                self.remove(n);
            }
        }
    }

    /// True when something was changed since parsing.
    pub fn is_edited(&self) -> bool {
        !self.edits.is_empty() || self.mti != self.layout.mti
    }

    fn fixed<const N: usize>(&self, n: usize) -> Option<[u8; N]> {
        let t = self.text(n)?;
        <[u8; N]>::try_from(t.as_bytes()).ok()
    }

    fn number(&self, n: usize) -> Option<u64> {
        let t = self.text(n)?;
        digits_value(&t)
    }

    /// DE 2, primary account number. `Some(Err)` when present but not 12 to 19 digits.
    pub fn pan(&self) -> Option<Result<Pan, PanError>> {
        let t = self.text(2)?;
        Some(Pan::from_digits(&t))
    }

    /// The card number: DE 2, or when there is none the account number of track 2 (DE 35),
    /// as card-present messages may carry it only there. `Some(Err)` when malformed.
    pub fn card_number(&self) -> Option<Result<Pan, PanError>> {
        match self.pan() {
            Some(pan) => Some(pan),
            None => self.track2().map(|t| Pan::from_digits(t.pan_digits())),
        }
    }

    /// Sets DE 2 (e.g. swapping the virtual number for the real one).
    pub fn set_pan(&mut self, pan: &Pan) -> Result<(), EditError> {
        self.set(2, pan.as_bytes())
    }

    /// Removes the [`CARD_VERIFICATION_DATA`], for a message that is kept (a reversal
    /// owed, on disk) or built to go on without them (a reversal vpan makes). The card
    /// number stays: put in DE 2 when the message carried it in track 2 alone, where the
    /// layout has a DE 2 to put it in.
    pub fn remove_card_verification_data(&mut self) {
        if self.pan().is_none()
            && let Some(Ok(card)) = self.card_number()
        {
            // A layout without DE 2 (or too short a one) keeps the message without it.
            let _ = self.set_pan(&card);
        }
        for n in CARD_VERIFICATION_DATA {
            self.remove(n);
        }
    }

    /// DE 3, processing code (its first two digits are the transaction type).
    pub fn processing_code(&self) -> Option<[u8; 6]> {
        self.fixed(3)
    }

    /// DE 4, transaction amount in minor units.
    pub fn amount_transaction(&self) -> Option<u64> {
        self.number(4)
    }

    /// DE 6, cardholder billing amount in minor units.
    pub fn amount_cardholder_billing(&self) -> Option<u64> {
        self.number(6)
    }

    /// DE 7, transmission date and time, `MMDDhhmmss`.
    pub fn transmission_time(&self) -> Option<[u8; 10]> {
        self.fixed(7)
    }

    /// DE 11, system trace audit number.
    pub fn stan(&self) -> Option<[u8; 6]> {
        self.fixed(11)
    }

    /// DE 14, expiry date `YYMM`.
    pub fn expiry(&self) -> Option<[u8; 4]> {
        self.fixed(14)
    }

    /// Sets DE 14.
    pub fn set_expiry(&mut self, yymm: &[u8; 4]) -> Result<(), EditError> {
        self.set(14, yymm)
    }

    /// DE 18, merchant category code.
    pub fn mcc(&self) -> Option<[u8; 4]> {
        self.fixed(18)
    }

    /// DE 32, acquiring institution identification code.
    pub fn acquirer(&self) -> Option<FieldText<'_>> {
        self.text(32)
    }

    /// DE 35, track 2, with the separator shown as `=` whatever the wire uses.
    pub fn track2(&self) -> Option<Track2> {
        let t = self.text(35)?;
        Track2::new(&t)
    }

    /// Sets DE 35 from track 2 text (digits and `=`).
    pub fn set_track2(&mut self, track2: &Track2) -> Result<(), EditError> {
        self.set(35, track2.as_bytes())
    }

    /// DE 38, authorization identification response.
    pub fn auth_code(&self) -> Option<FieldText<'_>> {
        self.text(38)
    }

    /// DE 39, response code.
    pub fn response_code(&self) -> Option<[u8; 2]> {
        self.fixed(39)
    }

    /// Sets DE 39.
    pub fn set_response_code(&mut self, code: &[u8; 2]) -> Result<(), EditError> {
        self.set(39, code)
    }

    /// DE 41, card acceptor terminal identification.
    pub fn terminal(&self) -> Option<FieldText<'_>> {
        self.text(41)
    }

    /// DE 42, card acceptor identification code.
    pub fn acceptor_id(&self) -> Option<FieldText<'_>> {
        self.text(42)
    }

    /// DE 43, card acceptor name and location.
    pub fn acceptor_name(&self) -> Option<FieldText<'_>> {
        self.text(43)
    }

    /// DE 49, transaction currency code.
    pub fn currency_transaction(&self) -> Option<[u8; 3]> {
        self.fixed(49)
    }

    /// DE 51, cardholder billing currency code.
    pub fn currency_cardholder_billing(&self) -> Option<[u8; 3]> {
        self.fixed(51)
    }

    /// DE 70, network management information code (001 sign-on, 002 sign-off, 301 echo).
    pub fn network_management_code(&self) -> Option<[u8; 3]> {
        self.fixed(70)
    }

    /// DE 90, original data elements of the message a reversal refers to.
    pub fn original_data(&self) -> Option<OriginalData> {
        let t: [u8; 42] = self.fixed(90)?;
        let mut o = OriginalData {
            mti: [0; 4],
            stan: [0; 6],
            transmission_time: [0; 10],
            acquirer: [0; 11],
            forwarder: [0; 11],
        };
        o.mti.copy_from_slice(t.get(0..4)?);
        o.stan.copy_from_slice(t.get(4..10)?);
        o.transmission_time.copy_from_slice(t.get(10..20)?);
        o.acquirer.copy_from_slice(t.get(20..31)?);
        o.forwarder.copy_from_slice(t.get(31..42)?);
        Some(o)
    }

    /// DE 95's first part, the transaction amount a partial reversal leaves in place, read
    /// on its own (its fee parts are often sent unsigned or blank): `Some(None)` when DE 95
    /// is there but does not start with 12 digits.
    pub fn replacement_transaction_amount(&self) -> Option<Option<u64>> {
        let t = self.text(95)?;
        Some(t.get(..12).and_then(digits_value))
    }

    /// DE 95, replacement amounts (what a partial reversal leaves in place).
    pub fn replacement_amounts(&self) -> Option<ReplacementAmounts> {
        let t: [u8; 42] = self.fixed(95)?;
        Some(ReplacementAmounts {
            transaction: digits_value(t.get(0..12)?)?,
            settlement: digits_value(t.get(12..24)?)?,
            transaction_fee: signed_value(t.get(24..33)?)?,
            settlement_fee: signed_value(t.get(33..42)?)?,
        })
    }

    /// Decodes the nested subfields of field `n` with the spec's subfield layout (jPOS
    /// `isofieldpackager`): `(subfield id, decoded value)` in order. Not on the hot path:
    /// it allocates.
    pub fn subfields(&self, n: usize) -> Result<Vec<(usize, Vec<u8>)>, super::parse::ParseError> {
        let undefined = super::parse::ParseError::UndefinedField {
            field: n as u16,
            offset: 0,
        };
        let sub = self
            .spec
            .subfields
            .get(n)
            .and_then(Option::as_ref)
            .ok_or(undefined)?;
        let f = self.spec.field(n).ok_or(undefined)?;
        let content = self.raw(n).unwrap_or_default();
        // Hex text on the wire holds the subfields' bytes.
        let bytes: Vec<u8> = if f.encoding == Encoding::HexAscii {
            content
                .chunks_exact(2)
                .filter_map(|p| {
                    let h = super::encoding::hex_value(*p.first()?)?;
                    let l = super::encoding::hex_value(*p.get(1)?)?;
                    Some((h << 4) | l)
                })
                .collect()
        } else {
            content.to_vec()
        };
        let subs = super::parse::parse_subfields(sub, n, &bytes)?;
        Ok(subs.into_iter().map(|(i, t)| (i, t.to_vec())).collect())
    }
}

impl fmt::Debug for Message {
    /// Field values are not printed (one of them is a card number); only the PAN masked.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mti = String::from_utf8_lossy(&self.mti);
        let fields: Vec<usize> = self.field_numbers().collect();
        let pan = self.text(2);
        f.debug_struct("Message")
            .field("spec", &self.spec.name)
            .field("mti", &mti)
            .field("pan", &pan.as_deref().map(Masked))
            .field("fields", &fields)
            .finish()
    }
}

/// Reads ASCII digits as a number; `None` on anything else or overflow.
fn digits_value(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 19 {
        return None;
    }
    v.iter().try_fold(0u64, |acc, &b| {
        let d = b.wrapping_sub(b'0');
        (d <= 9).then_some(acc * 10 + u64::from(d))
    })
}

/// Reads `C`/`D` then digits: credit positive, debit negative.
fn signed_value(v: &[u8]) -> Option<i64> {
    let (&sign, digits) = v.split_first()?;
    let x = i64::try_from(digits_value(digits)?).ok()?;
    match sign {
        b'C' => Some(x),
        b'D' => Some(-x),
        _ => None,
    }
}

/// Units (digits, characters or bytes) the field holds, from its prefix or its spec.
pub(crate) fn units_of(f: &FieldSpec, wire: &[u8]) -> usize {
    match f.length {
        super::spec::Length::Fixed => f.max_len as usize,
        super::spec::Length::Var { encoding, .. } => {
            let p = wire.get(..f.prefix_bytes()).unwrap_or_default();
            super::parse::prefix_value(p, encoding).unwrap_or(0) as usize
        }
    }
}

/// Decodes a field's wire bytes (prefix included) into its text form.
pub(crate) fn decode<'a>(f: &FieldSpec, wire: &'a [u8]) -> FieldText<'a> {
    let v = wire.get(f.prefix_bytes()..).unwrap_or_default();
    match f.encoding {
        Encoding::Ascii | Encoding::HexAscii => FieldText::borrowed(v),
        Encoding::Ebcdic => {
            let mut out = TextBuf::new();
            for &b in v {
                out.push(EBCDIC_TO_LATIN1[usize::from(b)]);
            }
            out.finish()
        }
        Encoding::Binary => {
            let mut out = TextBuf::new();
            for &b in v {
                out.push(hex_digit(b >> 4));
                out.push(hex_digit(b));
            }
            out.finish()
        }
        Encoding::Bcd(pad) => {
            // Only packed digits need the count from the prefix: half a byte may be padding.
            let units = units_of(f, wire);
            let mut out = TextBuf::new();
            let (sign, digits) = if matches!(f.kind, Kind::Xn) {
                match v.split_first() {
                    Some((&s, rest)) => (Some(s), rest),
                    None => (None, v),
                }
            } else {
                (None, v)
            };
            let ndigits = if sign.is_some() {
                units.saturating_sub(1)
            } else {
                units
            };
            if let Some(s) = sign {
                out.push(s);
            }
            let odd = ndigits % 2 == 1;
            let skip_first = odd && matches!(pad, Pad::Left0 | Pad::LeftF);
            let mut emitted = 0;
            for (i, &b) in digits.iter().enumerate() {
                for (j, nib) in [b >> 4, b & 0x0F].into_iter().enumerate() {
                    if i == 0 && j == 0 && skip_first {
                        continue;
                    }
                    if emitted < ndigits {
                        out.push(hex_digit(nib));
                        emitted += 1;
                    }
                }
            }
            out.finish()
        }
    }
}

/// Inline capacity of [`FieldText`] before it spills to the heap.
const INLINE: usize = 48;

/// A field's decoded value: borrowed from the frame when the wire already holds it as text,
/// decoded inline when short, on the heap only for long decoded fields. Dereferences to
/// `[u8]`. Its `Debug` masks the middle, since it may hold a card number.
#[derive(Clone)]
pub struct FieldText<'a>(Repr<'a>);

#[derive(Clone)]
enum Repr<'a> {
    Borrowed(&'a [u8]),
    Inline([u8; INLINE], u8),
    Owned(Vec<u8>),
}

impl<'a> FieldText<'a> {
    pub(crate) fn borrowed(v: &'a [u8]) -> FieldText<'a> {
        FieldText(Repr::Borrowed(v))
    }

    /// The bytes.
    pub fn as_bytes(&self) -> &[u8] {
        match &self.0 {
            Repr::Borrowed(v) => v,
            Repr::Inline(buf, len) => buf.get(..usize::from(*len)).unwrap_or_default(),
            Repr::Owned(v) => v,
        }
    }

    /// As text, when it is valid UTF-8 (always for ASCII content).
    pub fn as_str(&self) -> Option<&str> {
        std::str::from_utf8(self.as_bytes()).ok()
    }

    /// True when the value points into the received frame (no decoding was needed).
    pub fn is_borrowed(&self) -> bool {
        matches!(self.0, Repr::Borrowed(_))
    }
}

impl Deref for FieldText<'_> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl fmt::Debug for FieldText<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FieldText({})", Masked(self.as_bytes()))
    }
}

/// Builds a [`FieldText`] inline, spilling to a `Vec` past [`INLINE`] bytes.
pub(crate) struct TextBuf {
    inline: [u8; INLINE],
    len: usize,
    heap: Option<Vec<u8>>,
}

impl TextBuf {
    pub(crate) fn new() -> TextBuf {
        TextBuf {
            inline: [0; INLINE],
            len: 0,
            heap: None,
        }
    }

    #[inline]
    pub(crate) fn push(&mut self, b: u8) {
        if let Some(h) = &mut self.heap {
            h.push(b);
        } else if let Some(slot) = self.inline.get_mut(self.len) {
            *slot = b;
            self.len += 1;
        } else {
            let mut h = Vec::with_capacity(INLINE * 2);
            h.extend_from_slice(&self.inline);
            h.push(b);
            self.heap = Some(h);
        }
    }

    pub(crate) fn finish<'a>(self) -> FieldText<'a> {
        match self.heap {
            Some(h) => FieldText(Repr::Owned(h)),
            None => FieldText(Repr::Inline(self.inline, self.len as u8)),
        }
    }
}

/// Track 2 data (DE 35) as text with `=` as separator; masked when printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Track2 {
    /// The characters, left-aligned.
    buf: [u8; 37],
    /// How many are used.
    len: u8,
}

impl Track2 {
    /// From track 2 text; `D` (the BCD separator nibble) is read as `=`. `None` when longer
    /// than 37 characters or holding anything but digits and one separator.
    pub fn new(text: &[u8]) -> Option<Track2> {
        if text.len() > 37 {
            return None;
        }
        let mut buf = [0u8; 37];
        for (o, &c) in buf.iter_mut().zip(text) {
            *o = match c {
                b'0'..=b'9' | b'=' => c,
                b'D' | b'd' => b'=',
                _ => return None,
            };
        }
        Some(Track2 {
            buf,
            len: text.len() as u8,
        })
    }

    /// The characters.
    pub fn as_bytes(&self) -> &[u8] {
        self.buf.get(..usize::from(self.len)).unwrap_or_default()
    }

    /// The account number: the digits before the separator.
    pub fn pan_digits(&self) -> &[u8] {
        let b = self.as_bytes();
        let end = b.iter().position(|&c| c == b'=').unwrap_or(b.len());
        b.get(..end).unwrap_or_default()
    }

    /// The expiry `YYMM` right after the separator.
    pub fn expiry(&self) -> Option<[u8; 4]> {
        let b = self.as_bytes();
        let sep = b.iter().position(|&c| c == b'=')?;
        <[u8; 4]>::try_from(b.get(sep + 1..sep + 5)?).ok()
    }

    /// The same track with another account number and expiry (the rest kept), as the
    /// switch does when it swaps a virtual card for the real one.
    pub fn with_pan_and_expiry(&self, pan: &Pan, expiry: &[u8; 4]) -> Option<Track2> {
        let b = self.as_bytes();
        let sep = b.iter().position(|&c| c == b'=')?;
        let rest = b.get(sep + 5..)?;
        let mut out = Vec::with_capacity(37);
        out.extend_from_slice(pan.as_bytes());
        out.push(b'=');
        out.extend_from_slice(expiry);
        out.extend_from_slice(rest);
        Track2::new(&out)
    }
}

impl fmt::Debug for Track2 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Track2({})", Masked(self.pan_digits()))
    }
}

/// DE 90 split into its parts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OriginalData {
    /// MTI of the original message.
    pub mti: [u8; 4],
    /// Its STAN (DE 11).
    pub stan: [u8; 6],
    /// Its transmission date and time (DE 7).
    pub transmission_time: [u8; 10],
    /// Its acquiring institution (DE 32), zero-padded to 11.
    pub acquirer: [u8; 11],
    /// Its forwarding institution (DE 33), zero-padded to 11.
    pub forwarder: [u8; 11],
}

/// DE 95 split into its parts; amounts in minor units.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplacementAmounts {
    /// Actual amount, transaction: what the partial reversal leaves in place.
    pub transaction: u64,
    /// Actual amount, settlement.
    pub settlement: u64,
    /// Actual amount, transaction fee (credit positive, debit negative).
    pub transaction_fee: i64,
    /// Actual amount, settlement fee.
    pub settlement_fee: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repeat_keeps_its_class_and_function_and_a_repeat_stays_one() {
        for (mti, marked) in [
            (b"0100", b"0101"),
            (b"0200", b"0201"),
            (b"0400", b"0401"),
            (b"0420", b"0421"),
            (b"0401", b"0401"),
            (b"0421", b"0421"),
            // Not a first telling by the acquirer (an issuer's 0402, say): left as it is.
            (b"0402", b"0402"),
        ] {
            let mut m = Message::new(Spec::iso87ascii(), mti).unwrap();
            assert_eq!(m.is_repeat(), mti[3] == b'1');
            m.mark_repeat();
            assert_eq!(&m.mti(), marked, "{:?}", String::from_utf8_lossy(mti));
            assert_eq!(m.is_repeat(), mti[3] != b'2');
        }
    }

    #[test]
    fn the_fields_come_in_order_across_bitmaps_built_parsed_or_edited() {
        let spec = Spec::iso87ascii();
        let mut a = Message::new(spec, b"0110").unwrap();
        for (n, v) in [(3, &b"000000"[..]), (39, b"00"), (64, b"0011223344556677")] {
            a.set(n, v).unwrap();
        }
        a.set(70, b"301").unwrap();
        a.set(128, b"8899AABBCCDDEEFF").unwrap();
        assert_eq!(
            a.field_numbers().collect::<Vec<_>>(),
            vec![3, 39, 64, 70, 128]
        );
        let mut parsed = Message::parse(spec, a.pack()).unwrap();
        assert_eq!(
            parsed.field_numbers().collect::<Vec<_>>(),
            (2..=MAX_FIELD)
                .filter(|&n| parsed.has(n))
                .collect::<Vec<_>>()
        );
        parsed.remove(64);
        parsed
            .set(2, crate::pan::test_pan("497010").as_bytes())
            .unwrap();
        assert_eq!(
            parsed.field_numbers().collect::<Vec<_>>(),
            vec![2, 3, 39, 70, 128]
        );
    }

    #[test]
    fn card_verification_data_goes_and_the_card_number_stays_in_de_2() {
        let card = crate::pan::test_pan("497010");
        for with_de2 in [true, false] {
            let mut m = Message::new(Spec::iso87ascii(), b"0400").unwrap();
            if with_de2 {
                m.set(2, card.as_bytes()).unwrap();
            }
            m.set(35, format!("{card}=29121011234567890").as_bytes())
                .unwrap();
            m.set(45, format!("B{card}^HOLDER/A^2912101").as_bytes())
                .unwrap();
            m.set(52, b"0123456789ABCDEF").unwrap();
            m.set(55, b"9F2608AABBCCDDEEFF0011").unwrap();
            m.set(90, &[b'0'; 42]).unwrap();
            m.remove_card_verification_data();
            let m = Message::parse(Spec::iso87ascii(), m.pack()).unwrap();
            assert_eq!(
                m.field_numbers().collect::<Vec<_>>(),
                [2, 90],
                "with DE 2 {with_de2}"
            );
            assert_eq!(m.text(2).as_deref(), Some(card.as_bytes()));
        }
    }

    #[test]
    fn bitmap_positions_are_most_significant_bit_first() {
        assert_eq!(bit(1), (0, 1 << 63));
        assert_eq!(bit(64), (0, 1));
        assert_eq!(bit(65), (1, 1 << 63));
        assert_eq!(bit(128), (1, 1));
        assert_eq!(bit(192), (2, 1));
    }

    #[test]
    fn rank_counts_the_present_fields_before_a_number() {
        let mut mask = [0u64; 3];
        for n in [2, 3, 64, 70, 130] {
            let (w, m) = bit(n);
            mask[w] |= m;
        }
        let cases = [
            (2, 0),
            (3, 1),
            (4, 2),
            (64, 2),
            (65, 3),
            (70, 3),
            (71, 4),
            (130, 4),
            (192, 5),
        ];
        for (n, want) in cases {
            assert_eq!(rank(&mask, n), want, "field {n}");
        }
    }

    #[test]
    fn track2_reads_the_bcd_separator_as_equals_and_masks_when_printed() {
        let card = crate::pan::test_pan("497010");
        let t = Track2::new(format!("{card}D28121010000012300000").as_bytes()).unwrap();
        assert_eq!(t.pan_digits(), card.as_bytes());
        assert_eq!(t.expiry(), Some(*b"2812"));
        assert_eq!(
            format!("{t:?}"),
            format!("Track2(497010******{})", &card[12..])
        );
        let real_digits = crate::pan::test_pan("555555");
        let real = Pan::from_digits(real_digits.as_bytes()).unwrap();
        let swapped = t.with_pan_and_expiry(&real, b"3001").unwrap();
        assert_eq!(
            swapped.as_bytes(),
            format!("{real_digits}=30011010000012300000").as_bytes()
        );
        let long = Pan::from_digits(format!("{real_digits}123").as_bytes()).unwrap();
        assert!(
            t.with_pan_and_expiry(&long, b"3001").is_none(),
            "over 37 characters"
        );
        assert!(Track2::new(b"4970X").is_none());
    }

    #[test]
    fn signed_amounts_read_credit_as_positive_and_debit_as_negative() {
        assert_eq!(signed_value(b"C00000100"), Some(100));
        assert_eq!(signed_value(b"D00000100"), Some(-100));
        assert_eq!(signed_value(b"X00000100"), None);
        assert_eq!(digits_value(b"000000012345"), Some(12345));
        assert_eq!(digits_value(b"12a"), None);
    }

    #[test]
    fn field_text_spills_to_the_heap_only_past_its_inline_capacity() {
        let mut t = TextBuf::new();
        for _ in 0..INLINE {
            t.push(b'1');
        }
        let short = t.finish();
        assert_eq!(short.len(), INLINE);
        let mut t = TextBuf::new();
        for _ in 0..INLINE + 5 {
            t.push(b'2');
        }
        assert_eq!(t.finish().len(), INLINE + 5);
    }
}
