//! What a link's messages look like, as data: one [`FieldSpec`] per data element.
//!
//! ISO 8583 only fixes a framework; every link has its own dialect. Following moov-io and
//! jPOS, a dialect is a table: for each field its content type ([`Kind`]), how its bytes are
//! encoded ([`Encoding`]), whether and how its length is prefixed ([`Length`]), and its
//! maximum length. Parse and pack are generic over that table, so a new dialect is a new
//! table (built in, or loaded from a jPOS GenericPackager file by [`super::jpos`]), never new
//! code. [`Spec::by_name`] is what the config's `network.spec` / `issuer.spec` resolve to.

use std::fmt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};

/// Highest field number a spec can define (with a tertiary bitmap).
pub const MAX_FIELD: usize = 192;

/// The content type of a field, which decides what [`super::parse`] validates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `n`: decimal digits only (checked).
    N,
    /// `an`: letters and digits (not checked: real links carry spaces and more).
    An,
    /// `ans`: any character (not checked: merchant names arrive in Latin-1 and EBCDIC).
    Ans,
    /// `b`: raw bytes.
    B,
    /// `z`: track 2/3 data: digits and the `=` separator (BCD nibble `D`) (checked).
    Z,
    /// `x+n`: a `C` (credit) or `D` (debit) sign then digits, as in amount fees (checked).
    Xn,
}

/// BCD padding of an odd number of digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pad {
    /// A `0` nibble before the first digit (jPOS `pad="true"`).
    Left0,
    /// An `F` nibble before the first digit.
    LeftF,
    /// A `0` nibble after the last digit (jPOS `pad="false"` for `IFB_LLNUM`).
    Right0,
    /// An `F` nibble after the last digit, as some hosts write variable digits (jPOS's
    /// `IFB_FLLNUM`, a class vpan's loader does not take; `IFB_LLNUM` and `IFB_LLHNUM` pad
    /// with 0, [`Pad::Right0`]).
    RightF,
}

/// How a field's content is written on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// One ASCII character per unit.
    Ascii,
    /// One EBCDIC (IBM-1047) character per unit.
    Ebcdic,
    /// Two digits per byte; an odd count is padded as said.
    Bcd(Pad),
    /// Raw bytes; the length counts bytes.
    Binary,
    /// Raw bytes written as two hex ASCII characters each; the length counts bytes.
    HexAscii,
}

/// How a variable length prefix is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrefixEncoding {
    /// ASCII decimal digits, one byte each (`LL` = 2 bytes).
    Ascii,
    /// BCD digits, two per byte (`LL` = 1 byte, `LLL` = 2 bytes).
    Bcd,
    /// A big-endian binary number: 1 byte for `LL`, 2 bytes for `LLL` and more (jPOS `LLH`).
    Binary,
    /// EBCDIC decimal digits, one byte each.
    Ebcdic,
}

/// Fixed length, or a length prefix of 1 to 6 decimal digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Length {
    /// Always `max_len` units, no prefix.
    Fixed,
    /// A prefix of this many decimal digits (2 = `LL`, 3 = `LLL`, 4 = `LLLL` ...).
    Var {
        /// Number of decimal digits the prefix can hold.
        digits: u8,
        /// How the prefix is written.
        encoding: PrefixEncoding,
    },
}

/// One data element: content type, encoding, length rule and maximum length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FieldSpec {
    /// What the content may hold.
    pub kind: Kind,
    /// How the content is written.
    pub encoding: Encoding,
    /// Fixed or prefixed.
    pub length: Length,
    /// Exact length (fixed) or maximum (variable), in units: digits for BCD numerics,
    /// characters for text, bytes for binary.
    pub max_len: u32,
}

impl FieldSpec {
    /// A fixed-length field.
    pub const fn fixed(kind: Kind, encoding: Encoding, len: u32) -> FieldSpec {
        FieldSpec {
            kind,
            encoding,
            length: Length::Fixed,
            max_len: len,
        }
    }

    /// A variable-length field with a `digits`-digit prefix.
    pub const fn var(
        kind: Kind,
        encoding: Encoding,
        digits: u8,
        prefix: PrefixEncoding,
        max: u32,
    ) -> FieldSpec {
        FieldSpec {
            kind,
            encoding,
            length: Length::Var {
                digits,
                encoding: prefix,
            },
            max_len: max,
        }
    }

    /// Bytes the length prefix takes (0 for a fixed field).
    #[inline]
    pub const fn prefix_bytes(&self) -> usize {
        match self.length {
            Length::Fixed => 0,
            Length::Var { digits, encoding } => match encoding {
                PrefixEncoding::Ascii | PrefixEncoding::Ebcdic => digits as usize,
                PrefixEncoding::Bcd => (digits as usize).div_ceil(2),
                PrefixEncoding::Binary => {
                    if digits <= 2 {
                        1
                    } else {
                        2
                    }
                }
            },
        }
    }

    /// Wire bytes the content takes for `units` units.
    #[inline]
    pub const fn wire_len(&self, units: usize) -> usize {
        match self.encoding {
            Encoding::Ascii | Encoding::Ebcdic | Encoding::Binary => units,
            Encoding::HexAscii => units * 2,
            Encoding::Bcd(_) => {
                if matches!(self.kind, Kind::Xn) {
                    // The sign stays one character; the digits after it are packed.
                    if units == 0 {
                        0
                    } else {
                        1 + (units - 1).div_ceil(2)
                    }
                } else {
                    units.div_ceil(2)
                }
            }
        }
    }

    /// Largest value the prefix can express, in units.
    pub const fn prefix_capacity(&self) -> u32 {
        match self.length {
            Length::Fixed => self.max_len,
            Length::Var { digits, encoding } => match encoding {
                PrefixEncoding::Binary => {
                    if digits <= 2 {
                        255
                    } else {
                        65535
                    }
                }
                _ => {
                    let mut cap = 1u32;
                    let mut i = 0;
                    while i < digits && i < 9 {
                        cap *= 10;
                        i += 1;
                    }
                    cap - 1
                }
            },
        }
    }
}

/// What the parser checks in a field's content, decided once per field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Check {
    /// Nothing (text, binary).
    None,
    /// ASCII digits.
    AsciiDigits,
    /// ASCII digits, `=` or `D`.
    AsciiTrack,
    /// `C`/`D` then ASCII digits.
    AsciiSigned,
    /// Hex characters.
    Hex,
    /// EBCDIC digits.
    EbcdicDigits,
    /// EBCDIC digits, `=` or `D`.
    EbcdicTrack,
    /// EBCDIC `C`/`D` then EBCDIC digits.
    EbcdicSigned,
    /// Packed digits with a 0 pad nibble where odd.
    BcdDigits,
    /// Packed digits and `D` (track data) with any pad; checked nibble by nibble.
    BcdNibbles,
    /// Packed digits with an `F` pad nibble where odd; checked nibble by nibble.
    BcdPadded,
    /// ASCII `C`/`D` then packed digits.
    BcdSigned,
}

/// How content units turn into wire bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Width {
    /// One byte per unit.
    Same,
    /// Two units per byte (BCD).
    Half,
    /// A sign byte then two units per byte (BCD amounts).
    SignedHalf,
    /// Two bytes per unit (hex text).
    Double,
}

/// A field's layout, flattened for the parse loop.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Plan {
    /// False where the spec defines no field.
    pub defined: bool,
    /// Content check.
    pub check: Check,
    /// Units to wire bytes.
    pub width: Width,
    /// BCD pad (for the checks that need it).
    pub pad: Pad,
    /// Prefix encoding, meaningful when `prefix_bytes > 0`.
    pub prefix: PrefixEncoding,
    /// Bytes of length prefix; 0 for a fixed field.
    pub prefix_bytes: u8,
    /// Wire bytes of a fixed field.
    pub fixed_wire: u32,
    /// Exact (fixed) or maximum (variable) units.
    pub max: u32,
}

impl Plan {
    pub(crate) const UNDEFINED: Plan = Plan {
        defined: false,
        check: Check::None,
        width: Width::Same,
        pad: Pad::Left0,
        prefix: PrefixEncoding::Ascii,
        prefix_bytes: 0,
        fixed_wire: 0,
        max: 0,
    };

    pub(crate) fn of(f: &FieldSpec) -> Plan {
        let check = match (f.encoding, f.kind) {
            (Encoding::HexAscii, _) => Check::Hex,
            (Encoding::Ascii, Kind::N) => Check::AsciiDigits,
            (Encoding::Ascii, Kind::Z) => Check::AsciiTrack,
            (Encoding::Ascii, Kind::Xn) => Check::AsciiSigned,
            (Encoding::Ebcdic, Kind::N) => Check::EbcdicDigits,
            (Encoding::Ebcdic, Kind::Z) => Check::EbcdicTrack,
            (Encoding::Ebcdic, Kind::Xn) => Check::EbcdicSigned,
            (Encoding::Bcd(Pad::Left0 | Pad::Right0), Kind::N) => Check::BcdDigits,
            (Encoding::Bcd(_), Kind::N) => Check::BcdPadded,
            (Encoding::Bcd(_), Kind::Z) => Check::BcdNibbles,
            (Encoding::Bcd(_), Kind::Xn) => Check::BcdSigned,
            _ => Check::None,
        };
        let width = match (f.encoding, f.kind) {
            (Encoding::HexAscii, _) => Width::Double,
            (Encoding::Bcd(_), Kind::Xn) => Width::SignedHalf,
            (Encoding::Bcd(_), _) => Width::Half,
            _ => Width::Same,
        };
        let pad = match f.encoding {
            Encoding::Bcd(p) => p,
            _ => Pad::Left0,
        };
        let prefix = match f.length {
            Length::Fixed => PrefixEncoding::Ascii,
            Length::Var { encoding, .. } => encoding,
        };
        Plan {
            defined: true,
            check,
            width,
            pad,
            prefix,
            prefix_bytes: f.prefix_bytes() as u8,
            fixed_wire: f.wire_len(f.max_len as usize) as u32,
            max: f.max_len,
        }
    }

    /// Wire bytes for `units` units of content.
    #[inline(always)]
    pub(crate) fn wire_len(&self, units: usize) -> usize {
        match self.width {
            Width::Same => units,
            Width::Half => units.div_ceil(2),
            Width::SignedHalf => {
                if units == 0 {
                    0
                } else {
                    1 + (units - 1).div_ceil(2)
                }
            }
            Width::Double => units * 2,
        }
    }
}

/// How the bitmaps are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BitmapEncoding {
    /// 8 raw bytes per bitmap.
    Binary,
    /// 16 hex ASCII characters per bitmap.
    HexAscii,
}

/// A nested layout inside one field (jPOS `isofieldpackager`), decoded on demand by
/// [`super::Message::subfields`]; the outer field is parsed and validated as its own type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubSpec {
    /// Subfields by number (index = subfield id); `None` where the layout has a gap.
    pub fields: Vec<Option<FieldSpec>>,
    /// Subfield id that holds a bitmap saying which later subfields are present, if any;
    /// without one every subfield follows in order until the field's bytes run out.
    pub bitmap: Option<(usize, BitmapEncoding, u32)>,
    /// Names of the subfields, for error messages and tools.
    pub names: Vec<String>,
}

/// A dialect: MTI and bitmap encoding plus a [`FieldSpec`] per field number.
#[derive(Clone)]
pub struct Spec {
    /// Name shown in logs: `iso87ascii`, `iso87binary`, or the file it came from.
    pub name: String,
    /// How the message type indicator is written (4 digits, ASCII or BCD or EBCDIC).
    pub mti: FieldSpec,
    /// How bitmaps are written.
    pub bitmap: BitmapEncoding,
    /// 64, 128 or 192: how many fields the bitmaps can name (192 = tertiary bitmap,
    /// announced by bit 65 like the secondary is by bit 1).
    pub max_field: usize,
    /// Index = field number (0 and 1 unused); `None` where the dialect defines no field.
    /// Private so that [`Spec::set_field`] keeps `plans` in step.
    fields: Vec<Option<FieldSpec>>,
    /// The parser's precomputed view of `fields`, indexed by field number masked to a byte
    /// (so indexing needs no bounds check): what to check and how long each part is.
    pub(crate) plans: Box<[Plan; 256]>,
    /// A number no other field table had: new whenever `plans` change, so that the parse
    /// plans each thread caches per bitmap ([`super::shape`]) never outlive the fields they
    /// were made from.
    pub(crate) plans_id: u64,
    /// Field names, same index, for errors and tools.
    pub names: Vec<String>,
    /// Nested layouts, same index.
    pub subfields: Vec<Option<Arc<SubSpec>>>,
}

impl fmt::Debug for Spec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Spec")
            .field("name", &self.name)
            .field("max_field", &self.max_field)
            .finish_non_exhaustive()
    }
}

/// Why a spec could not be built or loaded.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// The spec file could not be read.
    #[error("cannot read spec file {path}: {source}")]
    Io {
        /// The path as given.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Not well-formed XML, or not a GenericPackager document.
    #[error("spec file is not a jPOS GenericPackager XML document: {0}")]
    Xml(String),
    /// A field uses a jPOS class vpan does not implement.
    #[error("field {field}: jPOS class {class} is not supported")]
    UnsupportedClass {
        /// Field id (a dotted path such as `127.2` for subfields).
        field: String,
        /// The class attribute.
        class: String,
    },
    /// A field's attributes make no sense (missing id, bad length, ...).
    #[error("field {field}: {reason}")]
    BadField {
        /// Field id (dotted path for subfields).
        field: String,
        /// What is wrong.
        reason: String,
    },
    /// An attribute of the `isopackager` element that vpan does not follow (jPOS reads
    /// them to shape the whole message: a header, no bitmap, a bitmap elsewhere).
    #[error("<isopackager {attribute}=\"{value}\">: {reason}")]
    Packager {
        /// The attribute's name.
        attribute: String,
        /// Its value, as written.
        value: String,
        /// Why it is refused, and what to do instead.
        reason: String,
    },
    /// Neither a built-in name nor an existing file.
    #[error("unknown spec {0:?}: use iso87ascii, iso87binary or a path to a jPOS XML file")]
    Unknown(String),
}

/// A fresh [`Spec::plans_id`]; 0 is never given out (an empty shape slot holds 0).
fn next_plans_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

impl Spec {
    /// Resolves a config value: `iso87ascii`, `iso87binary`, or a path to a jPOS
    /// GenericPackager XML file.
    ///
    /// Specs live as long as the process (a loaded file is leaked once, at start-up), so
    /// every [`super::Message`] can point at its spec without a reference count on the hot
    /// path and move freely between tasks.
    pub fn by_name(s: &str) -> Result<&'static Spec, SpecError> {
        match s {
            "iso87ascii" => Ok(Spec::iso87ascii()),
            "iso87binary" => Ok(Spec::iso87binary()),
            // A value that reads as a path is one: a file missing or unreadable is said so,
            // with the system's reason, not taken for an unknown name.
            path if Path::new(path).is_file() || path.contains('/') || path.ends_with(".xml") => {
                super::jpos::load_file(path).map(Spec::leak)
            }
            other => Err(SpecError::Unknown(other.to_owned())),
        }
    }

    /// Gives the spec a `'static` lifetime by leaking it: for specs made once per process.
    pub fn leak(self) -> &'static Spec {
        Box::leak(Box::new(self))
    }

    /// ISO 8583:1987 in ASCII: ASCII MTI and digits, hex bitmaps, ASCII `LL`/`LLL`
    /// prefixes (pyiso8583 `default_ascii`, jPOS `iso87ascii.xml`; pyiso8583's where they differ).
    pub fn iso87ascii() -> &'static Spec {
        static SPEC: LazyLock<Spec> = LazyLock::new(|| iso87(Flavour::Ascii));
        &SPEC
    }

    /// ISO 8583:1987 in binary: BCD MTI and numerics, binary bitmaps, BCD length prefixes,
    /// text in ASCII (jPOS `iso87binary.xml` / `ISO87BPackager`).
    pub fn iso87binary() -> &'static Spec {
        static SPEC: LazyLock<Spec> = LazyLock::new(|| iso87(Flavour::Binary));
        &SPEC
    }

    /// An empty spec to fill in by hand: MTI and bitmap as given, no fields.
    pub fn empty(name: &str, mti: FieldSpec, bitmap: BitmapEncoding, max_field: usize) -> Spec {
        Spec {
            name: name.to_owned(),
            mti,
            bitmap,
            max_field,
            fields: vec![None; MAX_FIELD + 1],
            plans: Box::new([Plan::UNDEFINED; 256]),
            plans_id: next_plans_id(),
            names: vec![String::new(); MAX_FIELD + 1],
            subfields: vec![None; MAX_FIELD + 1],
        }
    }

    /// The layout of field `n`, if the dialect defines it.
    #[inline]
    pub fn field(&self, n: usize) -> Option<&FieldSpec> {
        self.fields.get(n).and_then(Option::as_ref)
    }

    /// The name of field `n` (empty if unnamed).
    pub fn field_name(&self, n: usize) -> &str {
        self.names.get(n).map_or("", String::as_str)
    }

    /// Defines (or redefines) field `n`. Ignored for numbers above [`MAX_FIELD`].
    pub fn set_field(&mut self, n: usize, name: &str, spec: FieldSpec) {
        if let (Some(f), Some(nm), Some(p)) = (
            self.fields.get_mut(n),
            self.names.get_mut(n),
            self.plans.get_mut(n),
        ) {
            *f = Some(spec);
            *nm = name.to_owned();
            *p = Plan::of(&spec);
            self.plans_id = next_plans_id();
        }
    }

    /// Bytes one bitmap takes on the wire.
    #[inline]
    pub fn bitmap_bytes(&self) -> usize {
        match self.bitmap {
            BitmapEncoding::Binary => 8,
            BitmapEncoding::HexAscii => 16,
        }
    }
}

enum Flavour {
    Ascii,
    Binary,
}

/// The ISO 8583:1987 field table, in the two built-in encodings.
fn iso87(flavour: Flavour) -> Spec {
    use Kind::*;
    let binary = matches!(flavour, Flavour::Binary);
    let (mti, bitmap, name) = if binary {
        (
            FieldSpec::fixed(N, Encoding::Bcd(Pad::Left0), 4),
            BitmapEncoding::Binary,
            "iso87binary",
        )
    } else {
        (
            FieldSpec::fixed(N, Encoding::Ascii, 4),
            BitmapEncoding::HexAscii,
            "iso87ascii",
        )
    };
    let mut spec = Spec::empty(name, mti, bitmap, 128);
    let prefix = if binary {
        PrefixEncoding::Bcd
    } else {
        PrefixEncoding::Ascii
    };
    // Numbers fixed: left padded; variable: right padded (jPOS `pad="false"`).
    let num_fixed = if binary {
        Encoding::Bcd(Pad::Left0)
    } else {
        Encoding::Ascii
    };
    let num_var = if binary {
        Encoding::Bcd(Pad::Right0)
    } else {
        Encoding::Ascii
    };
    let bin = if binary {
        Encoding::Binary
    } else {
        Encoding::HexAscii
    };
    let n = |len| FieldSpec::fixed(N, num_fixed, len);
    let amount = |len| FieldSpec::fixed(Xn, num_fixed, len);
    let text = |kind, len| FieldSpec::fixed(kind, Encoding::Ascii, len);
    let ll_n = |max| FieldSpec::var(N, num_var, 2, prefix, max);
    let ll_text = |max| FieldSpec::var(Ans, Encoding::Ascii, 2, prefix, max);
    let lll_text = |max| FieldSpec::var(Ans, Encoding::Ascii, 3, prefix, max);
    let b = |len| FieldSpec::fixed(B, bin, len);

    let table: Vec<(usize, &str, FieldSpec)> = vec![
        (2, "primary account number", ll_n(19)),
        (3, "processing code", n(6)),
        (4, "amount, transaction", n(12)),
        (5, "amount, settlement", n(12)),
        (6, "amount, cardholder billing", n(12)),
        (7, "transmission date and time", n(10)),
        (8, "amount, cardholder billing fee", n(8)),
        (9, "conversion rate, settlement", n(8)),
        (10, "conversion rate, cardholder billing", n(8)),
        (11, "system trace audit number", n(6)),
        (12, "time, local transaction", n(6)),
        (13, "date, local transaction", n(4)),
        (14, "date, expiration", n(4)),
        (15, "date, settlement", n(4)),
        (16, "date, conversion", n(4)),
        (17, "date, capture", n(4)),
        (18, "merchant type", n(4)),
        (19, "acquiring institution country code", n(3)),
        (20, "PAN extended, country code", n(3)),
        (21, "forwarding institution country code", n(3)),
        (22, "point of service entry mode", n(3)),
        (23, "card sequence number", n(3)),
        (24, "network international identifier", n(3)),
        (25, "point of service condition code", n(2)),
        (26, "point of service PIN capture code", n(2)),
        (27, "authorization identification response length", n(1)),
        (28, "amount, transaction fee", amount(9)),
        (29, "amount, settlement fee", amount(9)),
        (30, "amount, transaction processing fee", amount(9)),
        (31, "amount, settlement processing fee", amount(9)),
        (32, "acquiring institution identification code", ll_n(11)),
        (33, "forwarding institution identification code", ll_n(11)),
        (34, "primary account number, extended", ll_text(28)),
        (
            35,
            "track 2 data",
            FieldSpec::var(Z, num_var, 2, prefix, 37),
        ),
        (36, "track 3 data", lll_text(104)),
        (37, "retrieval reference number", text(An, 12)),
        (38, "authorization identification response", text(An, 6)),
        (39, "response code", text(An, 2)),
        (40, "service restriction code", text(An, 3)),
        (41, "card acceptor terminal identification", text(Ans, 8)),
        (42, "card acceptor identification code", text(Ans, 15)),
        (43, "card acceptor name/location", text(Ans, 40)),
        (44, "additional response data", ll_text(25)),
        (45, "track 1 data", ll_text(76)),
        (46, "additional data, ISO", lll_text(999)),
        (47, "additional data, national", lll_text(999)),
        (48, "additional data, private", lll_text(999)),
        (49, "currency code, transaction", text(Ans, 3)),
        (50, "currency code, settlement", text(Ans, 3)),
        (51, "currency code, cardholder billing", text(Ans, 3)),
        (52, "personal identification number data", b(8)),
        (53, "security related control information", n(16)),
        (54, "additional amounts", lll_text(120)),
        (
            55,
            "ICC data",
            if binary {
                FieldSpec::var(B, Encoding::Binary, 3, prefix, 999)
            } else {
                lll_text(999)
            },
        ),
    ];
    for (num, nm, f) in table {
        spec.set_field(num, nm, f);
    }
    for num in 56..=63 {
        spec.set_field(num, "reserved", lll_text(999));
    }
    let table2: Vec<(usize, &str, FieldSpec)> = vec![
        (64, "message authentication code", b(8)),
        (65, "bitmap, extended", b(1)),
        (66, "settlement code", n(1)),
        (67, "extended payment code", n(2)),
        (68, "receiving institution country code", n(3)),
        (69, "settlement institution country code", n(3)),
        (70, "network management information code", n(3)),
        (71, "message number", n(4)),
        (72, "message number, last", n(4)),
        (73, "date, action", n(6)),
        (74, "credits, number", n(10)),
        (75, "credits reversal, number", n(10)),
        (76, "debits, number", n(10)),
        (77, "debits reversal, number", n(10)),
        (78, "transfer, number", n(10)),
        (79, "transfer reversal, number", n(10)),
        (80, "inquiries, number", n(10)),
        (81, "authorizations, number", n(10)),
        (82, "credits, processing fee amount", n(12)),
        (83, "credits, transaction fee amount", n(12)),
        (84, "debits, processing fee amount", n(12)),
        (85, "debits, transaction fee amount", n(12)),
        (86, "credits, amount", n(16)),
        (87, "credits reversal, amount", n(16)),
        (88, "debits, amount", n(16)),
        (89, "debits reversal, amount", n(16)),
        (90, "original data elements", n(42)),
        (91, "file update code", text(An, 1)),
        (92, "file security code", text(An, 2)),
        (93, "response indicator", text(An, 6)),
        (94, "service indicator", text(An, 7)),
        (95, "replacement amounts", text(An, 42)),
        (96, "message security code", b(16)),
        (97, "amount, net settlement", amount(17)),
        (98, "payee", text(Ans, 25)),
        (99, "settlement institution identification code", ll_n(11)),
        (100, "receiving institution identification code", ll_n(11)),
        (101, "file name", ll_text(17)),
        (102, "account identification 1", ll_text(28)),
        (103, "account identification 2", ll_text(28)),
        (104, "transaction description", lll_text(100)),
    ];
    for (num, nm, f) in table2 {
        spec.set_field(num, nm, f);
    }
    for num in 105..=127 {
        spec.set_field(num, "reserved", lll_text(999));
    }
    spec.set_field(128, "message authentication code", b(8));
    if !binary {
        // Where pyiso8583's `default_ascii` and jPOS's `iso87ascii.xml` disagree, the
        // ASCII layout is pyiso8583's, which is ISO 8583:1987's own here (DE 93 an 5,
        // DE 96 b 64) and takes the longer DE 54: its messages, and the vectors, are read
        // as they are sent. A peer on jPOS's file exactly loads that file by its path. The
        // binary layout stays jPOS's `iso87binary.xml`, as the contract names it; between
        // the two built-ins a message carrying one of these four fields in the other's
        // length cannot be moved (answered 30).
        spec.set_field(54, "additional amounts", lll_text(240));
        spec.set_field(65, "bitmap, extended", b(8));
        spec.set_field(93, "response indicator", text(An, 5));
        spec.set_field(96, "message security code", b(8));
    }
    spec
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_sizes_follow_the_prefix_encoding() {
        let cases = [
            (PrefixEncoding::Ascii, 2, 2, 99),
            (PrefixEncoding::Ascii, 3, 3, 999),
            (PrefixEncoding::Bcd, 2, 1, 99),
            (PrefixEncoding::Bcd, 3, 2, 999),
            (PrefixEncoding::Bcd, 4, 2, 9999),
            (PrefixEncoding::Binary, 2, 1, 255),
            (PrefixEncoding::Binary, 3, 2, 65535),
            (PrefixEncoding::Ebcdic, 2, 2, 99),
        ];
        for (enc, digits, bytes, cap) in cases {
            let f = FieldSpec::var(Kind::Ans, Encoding::Ascii, digits, enc, 10);
            assert_eq!(f.prefix_bytes(), bytes, "{enc:?} {digits}");
            assert_eq!(f.prefix_capacity(), cap, "{enc:?} {digits}");
        }
    }

    #[test]
    fn wire_length_counts_bcd_digits_two_per_byte_and_hex_two_chars_per_byte() {
        let bcd = FieldSpec::fixed(Kind::N, Encoding::Bcd(Pad::Left0), 3);
        assert_eq!(bcd.wire_len(3), 2);
        assert_eq!(bcd.wire_len(42), 21);
        let amount = FieldSpec::fixed(Kind::Xn, Encoding::Bcd(Pad::Left0), 9);
        assert_eq!(amount.wire_len(9), 5);
        let hex = FieldSpec::fixed(Kind::B, Encoding::HexAscii, 8);
        assert_eq!(hex.wire_len(8), 16);
    }

    #[test]
    fn the_ascii_layout_takes_pyiso8583s_lengths_and_the_binary_one_jposs() {
        // DE 54, 65, 93, 96: where pyiso8583's `default_ascii` and jPOS's files differ.
        let len = |spec: &Spec, n| spec.field(n).unwrap().max_len;
        let ascii: Vec<u32> = [54, 65, 93, 96]
            .map(|n| len(Spec::iso87ascii(), n))
            .to_vec();
        let binary: Vec<u32> = [54, 65, 93, 96]
            .map(|n| len(Spec::iso87binary(), n))
            .to_vec();
        assert_eq!(ascii, vec![240, 8, 5, 8]);
        assert_eq!(binary, vec![120, 1, 6, 16]);
        // Every other field the same in both (DE 55: hex text in one, bytes in the other).
        for n in (2..=128).filter(|n| ![54, 55, 65, 93, 96].contains(n)) {
            let (a, b) = (
                Spec::iso87ascii().field(n).unwrap(),
                Spec::iso87binary().field(n).unwrap(),
            );
            assert_eq!(
                (a.max_len, matches!(a.length, Length::Fixed)),
                (b.max_len, matches!(b.length, Length::Fixed)),
                "field {n}"
            );
        }
    }

    #[test]
    fn built_in_specs_define_the_fields_the_switch_uses() {
        for spec in [Spec::iso87ascii(), Spec::iso87binary()] {
            for n in [
                2, 3, 4, 6, 7, 11, 14, 18, 32, 35, 38, 39, 41, 42, 43, 49, 51, 70, 90, 95,
            ] {
                assert!(spec.field(n).is_some(), "{} lacks field {n}", spec.name);
            }
            assert_eq!(spec.max_field, 128);
        }
    }

    #[test]
    fn by_name_knows_the_built_ins_and_refuses_anything_else() {
        assert_eq!(Spec::by_name("iso87ascii").unwrap().name, "iso87ascii");
        assert_eq!(Spec::by_name("iso87binary").unwrap().name, "iso87binary");
        assert!(matches!(Spec::by_name("iso93"), Err(SpecError::Unknown(_))));
    }
}
