//! jPOS GenericPackager XML to [`Spec`].
//!
//! ISO 8583 shops keep their links' dialects as jPOS GenericPackager files, so vpan reads
//! them instead of asking for a new format. Each `isofield` names a jPOS field class; the
//! class says the encoding and the length prefix, which map onto [`FieldSpec`] (table in
//! [`field_from_class`]). `isofieldpackager` elements (nested subfields) keep the outer
//! field's class for parsing and packing, and their subfields are loaded into a
//! [`SubSpec`] that [`super::Message::subfields`] decodes on demand. The DOCTYPE is ignored
//! (nothing is fetched). A class vpan does not implement is an error that names the field
//! id and the class, so a bad file fails at start-up, not on the first message.

use std::sync::Arc;

use quick_xml::Reader;
use quick_xml::events::{BytesStart, Event};

use super::spec::{
    BitmapEncoding, Encoding, FieldSpec, Kind, Length, MAX_FIELD, Pad, PrefixEncoding, Spec,
    SpecError, SubSpec,
};

/// The most wire bytes a fixed field may take: as much as any frame holds.
const MAX_FIELD_WIRE_BYTES: usize = 65_535;

/// Loads a GenericPackager file.
pub fn load_file(path: &str) -> Result<Spec, SpecError> {
    let xml = std::fs::read_to_string(path).map_err(|source| SpecError::Io {
        path: path.to_owned(),
        source,
    })?;
    from_xml(path, &xml)
}

/// What one `isofield` / `isofieldpackager` element says.
#[derive(Debug, Default)]
struct Element {
    id: String,
    length: String,
    class: String,
    name: String,
    pad: bool,
    children: Vec<Element>,
}

/// Reads a GenericPackager document. `name` becomes [`Spec::name`].
pub fn from_xml(name: &str, xml: &str) -> Result<Spec, SpecError> {
    let (top, max_valid_field) = read_elements(xml)?;
    let mut mti: Option<FieldSpec> = None;
    let mut bitmap: Option<(BitmapEncoding, u32)> = None;
    let mut fields: Vec<(usize, Element)> = Vec::new();
    for e in top {
        let id: usize = e.id.parse().map_err(|_| SpecError::BadField {
            field: e.id.clone(),
            reason: "id is not a number".into(),
        })?;
        match id {
            0 => {
                let f = field_from_class(&e, &e.id)?;
                // Fixed, numeric, in characters or packed digits: the MTI is read at a
                // fixed place, so an LL prefix or raw bytes there would make every
                // frame unreadable at run time rather than the file refused now.
                let digits = matches!(
                    f.encoding,
                    Encoding::Ascii | Encoding::Ebcdic | Encoding::Bcd(_)
                );
                if f.max_len != 4 || f.length != Length::Fixed || f.kind != Kind::N || !digits {
                    return Err(bad(&e.id, "the MTI must be 4 fixed digits"));
                }
                mti = Some(f);
            }
            1 => bitmap = Some(bitmap_from_class(&e, &e.id)?),
            n if max_valid_field.is_some_and(|max| n > max) => {
                return Err(bad(
                    &e.id,
                    "above the file's maxValidField, a field jPOS would never read or write",
                ));
            }
            n if n <= MAX_FIELD => fields.push((n, e)),
            _ => return Err(bad(&e.id, "field numbers go up to 192")),
        }
    }
    let mti = mti.ok_or_else(|| bad("0", "the file defines no MTI (field 0)"))?;
    let (bm_enc, bm_bytes) =
        bitmap.ok_or_else(|| bad("1", "the file defines no bitmap (field 1)"))?;
    let max_field = match bm_bytes {
        0..=8 => 64,
        9..=16 => 128,
        _ => 192,
    };
    let mut spec = Spec::empty(name, mti, bm_enc, max_field);
    for (n, e) in fields {
        let f = field_from_class(&e, &e.id)?;
        if !e.children.is_empty() {
            let sub = subspec(&e)?;
            if let Some(slot) = spec.subfields.get_mut(n) {
                *slot = Some(Arc::new(sub));
            }
        }
        spec.set_field(n, &e.name, f);
    }
    Ok(spec)
}

fn bad(field: &str, reason: &str) -> SpecError {
    SpecError::BadField {
        field: field.to_owned(),
        reason: reason.to_owned(),
    }
}

/// The nested layout of an `isofieldpackager`.
fn subspec(e: &Element) -> Result<SubSpec, SpecError> {
    let mut sub = SubSpec {
        fields: Vec::new(),
        bitmap: None,
        names: Vec::new(),
    };
    for c in &e.children {
        let path = format!("{}.{}", e.id, c.id);
        let id: usize = c.id.parse().map_err(|_| bad(&path, "id is not a number"))?;
        if id > MAX_FIELD {
            return Err(bad(&path, "subfield numbers go up to 192"));
        }
        if sub.fields.len() <= id {
            sub.fields.resize(id + 1, None);
            sub.names.resize(id + 1, String::new());
        }
        if short_class(&c.class).contains("BITMAP") {
            let (enc, bytes) = bitmap_from_class(c, &path)?;
            sub.bitmap = Some((id, enc, bytes));
        } else if let Some(slot) = sub.fields.get_mut(id) {
            *slot = Some(field_from_class(c, &path)?);
        }
        if let Some(nm) = sub.names.get_mut(id) {
            nm.clone_from(&c.name);
        }
    }
    Ok(sub)
}

/// The class name without its Java package.
fn short_class(class: &str) -> &str {
    let c = class.trim();
    c.rsplit('.').next().unwrap_or(c)
}

/// A bitmap class: its encoding and its length in bytes.
fn bitmap_from_class(e: &Element, path: &str) -> Result<(BitmapEncoding, u32), SpecError> {
    let len: u32 = e
        .length
        .trim()
        .parse()
        .map_err(|_| bad(path, "length is not a number"))?;
    match short_class(&e.class) {
        "IFA_BITMAP" => Ok((BitmapEncoding::HexAscii, len)),
        "IFB_BITMAP" | "Base1_BITMAP126" => Ok((BitmapEncoding::Binary, len)),
        other => Err(SpecError::UnsupportedClass {
            field: path.to_owned(),
            class: other.to_owned(),
        }),
    }
}

/// Maps a jPOS field class onto a [`FieldSpec`].
///
/// | family | content | length prefix |
/// |---|---|---|
/// | `IFA_NUMERIC`, `IFA_LL..NUM` | ASCII digits | ASCII decimal |
/// | `IF_CHAR`, `IFA_LL..CHAR` | ASCII text | ASCII decimal |
/// | `IFA_AMOUNT` | `C`/`D` and ASCII digits | none |
/// | `IFA_BINARY` | bytes as hex ASCII (length counts bytes) | none |
/// | `IFA_LL..BINARY` | raw bytes | ASCII decimal |
/// | `IFB_NUMERIC`, `IFB_LL..NUM` | BCD, `pad="true"` left, else right, with 0 | BCD |
/// | `IFB_LLHNUM` | BCD, padded as above | 1 binary byte (counts digits) |
/// | `IFB_LL..CHAR`, `IFB_LLHCHAR` | ASCII text | BCD / 1 binary byte |
/// | `IFB_LLHECHAR` | EBCDIC text | 1 binary byte |
/// | `IFB_BINARY`, `IFB_LL..BINARY`, `IFB_LLHBINARY` | bytes | none / BCD / 1 binary byte |
/// | `IFB_AMOUNT` | `C`/`D` (ASCII) then BCD digits | none |
/// | `IFE_CHAR`, `IFE_NUMERIC`, `IFE_LL..CHAR`, `IFE_LL..NUM` | EBCDIC | EBCDIC decimal |
///
/// Numeric classes on fields 35 and 36 (track data) get kind `z`, since they carry the
/// `=` separator (BCD nibble `D`) that jPOS passes through unchecked.
fn field_from_class(e: &Element, path: &str) -> Result<FieldSpec, SpecError> {
    let class = short_class(&e.class);
    let len: u32 = e
        .length
        .trim()
        .parse()
        .map_err(|_| bad(path, "length is not a number"))?;
    let unsupported = || SpecError::UnsupportedClass {
        field: path.to_owned(),
        class: class.to_owned(),
    };
    let (family, rest) = class.split_once('_').ok_or_else(unsupported)?;
    let l_count = rest.bytes().take_while(|&b| b == b'L').count();
    let after_l = rest.get(l_count..).unwrap_or_default();
    let (binary_prefix, base) = match after_l.strip_prefix('H') {
        Some(b) if l_count > 0 => (true, b),
        _ => (false, after_l),
    };
    let pad_left = e.pad;
    let track = matches!(path, "35" | "36");
    let num_kind = if track { Kind::Z } else { Kind::N };
    let (kind, encoding, prefix) = match (family, base) {
        ("IFA", "NUMERIC" | "NUM") => (num_kind, Encoding::Ascii, PrefixEncoding::Ascii),
        ("IF", "CHAR") | ("IFA", "CHAR") => (Kind::Ans, Encoding::Ascii, PrefixEncoding::Ascii),
        ("IFA", "AMOUNT") => (Kind::Xn, Encoding::Ascii, PrefixEncoding::Ascii),
        // Fixed IFA_BINARY is hex text; the variable IFA_LL..BINARY are raw bytes.
        ("IFA", "BINARY") if l_count == 0 => (Kind::B, Encoding::HexAscii, PrefixEncoding::Ascii),
        ("IFA", "BINARY") => (Kind::B, Encoding::Binary, PrefixEncoding::Ascii),
        ("IFB", "NUMERIC" | "NUM") => {
            let pad = if pad_left { Pad::Left0 } else { Pad::Right0 };
            let prefix = if binary_prefix {
                PrefixEncoding::Binary
            } else {
                PrefixEncoding::Bcd
            };
            (num_kind, Encoding::Bcd(pad), prefix)
        }
        ("IFB", "CHAR") => (
            Kind::Ans,
            Encoding::Ascii,
            if binary_prefix {
                PrefixEncoding::Binary
            } else {
                PrefixEncoding::Bcd
            },
        ),
        ("IFB", "ECHAR") if binary_prefix => (Kind::Ans, Encoding::Ebcdic, PrefixEncoding::Binary),
        ("IFB", "BINARY") => (
            Kind::B,
            Encoding::Binary,
            if binary_prefix {
                PrefixEncoding::Binary
            } else {
                PrefixEncoding::Bcd
            },
        ),
        ("IFB", "AMOUNT") => {
            let pad = if pad_left { Pad::Left0 } else { Pad::Right0 };
            (Kind::Xn, Encoding::Bcd(pad), PrefixEncoding::Bcd)
        }
        ("IFE", "CHAR") => (Kind::Ans, Encoding::Ebcdic, PrefixEncoding::Ebcdic),
        ("IFE", "NUMERIC" | "NUM") => (num_kind, Encoding::Ebcdic, PrefixEncoding::Ebcdic),
        _ => return Err(unsupported()),
    };
    // Fixed classes have no L's (IF_CHAR, IFx_NUMERIC, IFx_BINARY, IFx_AMOUNT); a
    // variable class needs 2 to 6.
    let f = if l_count == 0 {
        if binary_prefix || matches!(base, "NUM") {
            return Err(unsupported());
        }
        FieldSpec::fixed(kind, encoding, len)
    } else {
        if !(2..=6).contains(&l_count) || matches!(base, "NUMERIC" | "AMOUNT") {
            return Err(unsupported());
        }
        FieldSpec::var(kind, encoding, l_count as u8, prefix, len)
    };
    if len > f.prefix_capacity() {
        return Err(bad(
            path,
            &format!("length {len} does not fit the prefix of {class}"),
        ));
    }
    // No frame holds more (every framing's length is 16 bits): a larger fixed length
    // could only be a typo, and would not fit the codec's 32-bit wire sizes either. (A
    // variable field's length is only a bound: jPOS files give LLLLLL fields 999999.)
    if l_count == 0 && f.wire_len(len as usize) > MAX_FIELD_WIRE_BYTES {
        return Err(bad(
            path,
            &format!("length {len} is more than a frame can hold ({MAX_FIELD_WIRE_BYTES} bytes)"),
        ));
    }
    Ok(f)
}

/// Reads the `isofield` / `isofieldpackager` elements of the document, nested ones as
/// children, and the root's `maxValidField` when it has one.
fn read_elements(xml: &str) -> Result<(Vec<Element>, Option<usize>), SpecError> {
    let mut reader = Reader::from_str(xml);
    reader.config_mut().trim_text(true);
    let mut stack: Vec<Element> = Vec::new();
    let mut top: Vec<Element> = Vec::new();
    let mut saw_root = false;
    let mut max_valid_field = None;
    loop {
        let ev = reader
            .read_event()
            .map_err(|e| SpecError::Xml(format!("at byte {}: {e}", reader.buffer_position())))?;
        match ev {
            Event::Start(s) => match s.local_name().as_ref() {
                b"isopackager" => {
                    saw_root = true;
                    max_valid_field = packager_attributes(&s)?;
                }
                b"isofield" | b"isofieldpackager" => stack.push(element(&s)?),
                _ => {}
            },
            Event::Empty(s) => match s.local_name().as_ref() {
                b"isopackager" => {
                    saw_root = true;
                    max_valid_field = packager_attributes(&s)?;
                }
                b"isofield" | b"isofieldpackager" => {
                    let e = element(&s)?;
                    match stack.last_mut() {
                        Some(parent) => parent.children.push(e),
                        None => top.push(e),
                    }
                }
                _ => {}
            },
            Event::End(s) => {
                if matches!(s.local_name().as_ref(), b"isofield" | b"isofieldpackager")
                    && let Some(e) = stack.pop()
                {
                    match stack.last_mut() {
                        Some(parent) => parent.children.push(e),
                        None => top.push(e),
                    }
                }
            }
            Event::Eof => break,
            _ => {}
        }
    }
    if !saw_root {
        return Err(SpecError::Xml("no <isopackager> element".into()));
    }
    if !stack.is_empty() {
        return Err(SpecError::Xml("unclosed <isofieldpackager>".into()));
    }
    Ok((top, max_valid_field))
}

/// Checks the `isopackager` element's attributes, which jPOS reads to shape the whole
/// message: each one vpan does not follow is refused here, since a file loaded without it
/// would read or write every message otherwise than the link does (a file with
/// `headerLength="5"` loaded as if it had none fails every frame at its MTI). Returns
/// `maxValidField`, if given: no field above it may be defined.
fn packager_attributes(s: &BytesStart<'_>) -> Result<Option<usize>, SpecError> {
    let mut max_valid_field = None;
    for (attribute, value) in attributes(s)? {
        let v = value.trim();
        let refused = match attribute.as_str() {
            "headerLength" if v == "0" => None,
            "headerLength" => Some(
                "vpan takes a link's fixed header from its header_hex setting (network.header_hex or issuer.header_hex: the header's bytes, as hex), not from the layout: set it there and remove the attribute",
            ),
            "emitBitmap" if v.eq_ignore_ascii_case("true") => None,
            "emitBitmap" => Some("vpan reads and writes messages with a bitmap only"),
            "bitmapField" if v == "1" => None,
            "bitmapField" => Some("vpan reads the bitmap as field 1 only"),
            // What jPOS takes when the attribute is absent and field 1 is the bitmap.
            "firstField" if v == "2" => None,
            "firstField" => Some("vpan reads the fields after the bitmap from field 2"),
            "thirdBitmapField" => Some(
                "vpan reads a third bitmap only as part of field 1 (a bitmap of length 24), not as a field of its own",
            ),
            "maxValidField" => match v.parse::<usize>() {
                Ok(max) if (1..=MAX_FIELD).contains(&max) => {
                    max_valid_field = Some(max);
                    None
                }
                _ => Some("not a field number from 1 to 192"),
            },
            _ => None,
        };
        if let Some(reason) = refused {
            return Err(SpecError::Packager {
                attribute,
                value,
                reason: reason.into(),
            });
        }
    }
    Ok(max_valid_field)
}

/// The attributes of `s`, by local name, their values unescaped.
fn attributes(s: &BytesStart<'_>) -> Result<Vec<(String, String)>, SpecError> {
    s.attributes()
        .map(|a| {
            let a = a.map_err(|err| SpecError::Xml(err.to_string()))?;
            let value = a
                .unescape_value()
                .map_err(|err| SpecError::Xml(err.to_string()))?
                .into_owned();
            Ok((
                String::from_utf8_lossy(a.key.local_name().as_ref()).into_owned(),
                value,
            ))
        })
        .collect()
}

fn element(s: &BytesStart<'_>) -> Result<Element, SpecError> {
    let mut e = Element::default();
    for (name, v) in attributes(s)? {
        match name.as_bytes() {
            // Trimmed once here: a field's number and its path name it alike (the
            // track rule of DE 35 and 36 goes by the path).
            b"id" => e.id = v.trim().to_owned(),
            b"length" => e.length = v,
            b"class" => e.class = v,
            b"name" => e.name = v,
            b"pad" => e.pad = v.trim().eq_ignore_ascii_case("true"),
            _ => {}
        }
    }
    if e.id.is_empty() {
        return Err(bad("?", "an isofield has no id"));
    }
    Ok(e)
}

/// The jPOS class that writes a field the way `f` says; `None` for the few layouts no
/// stock class has (e.g. EBCDIC digits with a BCD prefix).
pub fn class_for(f: &FieldSpec) -> Option<String> {
    use super::spec::Length;
    let ls = |d: u8| "L".repeat(usize::from(d));
    let numeric = matches!(f.kind, Kind::N | Kind::Z);
    Some(match (f.length, f.encoding) {
        (Length::Fixed, Encoding::Ascii) => match f.kind {
            Kind::Xn => "IFA_AMOUNT".into(),
            _ if numeric => "IFA_NUMERIC".into(),
            _ => "IF_CHAR".into(),
        },
        (Length::Fixed, Encoding::Bcd(_)) => match f.kind {
            Kind::Xn => "IFB_AMOUNT".into(),
            _ => "IFB_NUMERIC".into(),
        },
        (Length::Fixed, Encoding::HexAscii) => "IFA_BINARY".into(),
        (Length::Fixed, Encoding::Binary) => "IFB_BINARY".into(),
        (Length::Fixed, Encoding::Ebcdic) => {
            if numeric {
                "IFE_NUMERIC".into()
            } else {
                "IFE_CHAR".into()
            }
        }
        (Length::Var { digits, encoding }, enc) => {
            let base = match enc {
                Encoding::Bcd(_) => "NUM",
                Encoding::Binary | Encoding::HexAscii => "BINARY",
                _ if numeric => "NUM",
                _ => "CHAR",
            };
            match (encoding, enc) {
                (PrefixEncoding::Ascii, Encoding::Ascii | Encoding::Binary) => {
                    format!("IFA_{}{base}", ls(digits))
                }
                (PrefixEncoding::Bcd, Encoding::Ascii | Encoding::Binary | Encoding::Bcd(_)) => {
                    format!("IFB_{}{base}", ls(digits))
                }
                (PrefixEncoding::Binary, Encoding::Ebcdic) if digits == 2 => "IFB_LLHECHAR".into(),
                (PrefixEncoding::Binary, Encoding::Ascii | Encoding::Binary | Encoding::Bcd(_))
                    if digits == 2 =>
                {
                    format!("IFB_LLH{base}")
                }
                (PrefixEncoding::Ebcdic, Encoding::Ebcdic) => format!("IFE_{}{base}", ls(digits)),
                _ => return None,
            }
        }
    })
}

/// Writes a spec as a GenericPackager document (subfield layouts are not written). Fields
/// whose layout no stock jPOS class has are left out.
pub fn to_xml(spec: &Spec) -> String {
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    out.push_str(&format!(
        "<!-- {} field layout, written by vpan -->\n<isopackager>\n",
        spec.name
    ));
    let mut line = |id: usize, len: u32, name: &str, class: &str, pad: Option<bool>| {
        let pad = pad.map_or(String::new(), |p| format!(" pad=\"{p}\""));
        let name = name
            .replace('&', "&amp;")
            .replace('"', "&quot;")
            .replace('<', "&lt;");
        out.push_str(&format!(
            "  <isofield id=\"{id}\" length=\"{len}\" name=\"{name}\" class=\"org.jpos.iso.{class}\"{pad}/>\n"
        ));
    };
    let pad_of = |f: &FieldSpec| match f.encoding {
        Encoding::Bcd(p) => Some(matches!(p, Pad::Left0 | Pad::LeftF)),
        _ => None,
    };
    if let Some(c) = class_for(&spec.mti) {
        line(0, 4, "message type indicator", &c, pad_of(&spec.mti));
    }
    let (bm, bytes) = match spec.bitmap {
        BitmapEncoding::Binary => ("IFB_BITMAP", spec.max_field / 8),
        BitmapEncoding::HexAscii => ("IFA_BITMAP", spec.max_field / 8),
    };
    line(1, bytes as u32, "bitmap", bm, None);
    for n in 2..=spec.max_field {
        if let Some(f) = spec.field(n)
            && let Some(c) = class_for(f)
        {
            line(n, f.max_len, spec.field_name(n), &c, pad_of(f));
        }
    }
    out.push_str("</isopackager>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn el(id: &str, length: &str, class: &str, pad: bool) -> Element {
        Element {
            id: id.into(),
            length: length.into(),
            class: class.into(),
            name: String::new(),
            pad,
            children: vec![],
        }
    }

    #[test]
    fn jpos_classes_map_to_encoding_and_prefix() {
        use Encoding::*;
        type Case = (
            &'static str,
            bool,
            Kind,
            Encoding,
            Option<(u8, PrefixEncoding)>,
        );
        let cases: &[Case] = &[
            ("org.jpos.iso.IFA_NUMERIC", false, Kind::N, Ascii, None),
            (
                "org.jpos.iso.IFA_LLNUM",
                false,
                Kind::N,
                Ascii,
                Some((2, PrefixEncoding::Ascii)),
            ),
            ("org.jpos.iso.IF_CHAR", false, Kind::Ans, Ascii, None),
            (
                "org.jpos.iso.IFA_LLLLLLBINARY",
                false,
                Kind::B,
                Binary,
                Some((6, PrefixEncoding::Ascii)),
            ),
            (
                "org.jpos.iso.IFB_NUMERIC",
                true,
                Kind::N,
                Bcd(Pad::Left0),
                None,
            ),
            (
                "org.jpos.iso.IFB_LLNUM",
                false,
                Kind::N,
                Bcd(Pad::Right0),
                Some((2, PrefixEncoding::Bcd)),
            ),
            (
                "org.jpos.iso.IFB_LLHNUM",
                false,
                Kind::N,
                Bcd(Pad::Right0),
                Some((2, PrefixEncoding::Binary)),
            ),
            (
                "org.jpos.iso.IFB_LLHECHAR",
                false,
                Kind::Ans,
                Ebcdic,
                Some((2, PrefixEncoding::Binary)),
            ),
            (
                "org.jpos.iso.IFB_LLLBINARY",
                false,
                Kind::B,
                Binary,
                Some((3, PrefixEncoding::Bcd)),
            ),
            (
                "org.jpos.iso.IFB_AMOUNT",
                true,
                Kind::Xn,
                Bcd(Pad::Left0),
                None,
            ),
            ("org.jpos.iso.IFE_CHAR", false, Kind::Ans, Ebcdic, None),
            ("org.jpos.iso.IFB_BINARY ", false, Kind::B, Binary, None),
        ];
        for &(class, pad, kind, encoding, var) in cases {
            let f = field_from_class(&el("48", "99", class, pad), "48").unwrap();
            assert_eq!((f.kind, f.encoding), (kind, encoding), "{class}");
            match var {
                None => assert_eq!(f.length, super::super::spec::Length::Fixed, "{class}"),
                Some((digits, encoding)) => assert_eq!(
                    f.length,
                    super::super::spec::Length::Var { digits, encoding },
                    "{class}"
                ),
            }
        }
    }

    #[test]
    fn an_unknown_class_is_refused_naming_field_and_class() {
        let err = field_from_class(&el("48", "99", "org.jpos.iso.IFX_FANCY", false), "48")
            .unwrap_err()
            .to_string();
        assert!(err.contains("48") && err.contains("IFX_FANCY"), "{err}");
    }

    #[test]
    fn a_length_beyond_the_prefix_is_refused() {
        assert!(field_from_class(&el("2", "100", "org.jpos.iso.IFA_LLNUM", false), "2").is_err());
    }

    #[test]
    fn the_built_in_specs_survive_a_trip_through_xml() {
        for spec in [Spec::iso87ascii(), Spec::iso87binary()] {
            let back = from_xml("back", &to_xml(spec)).unwrap();
            assert_eq!(back.mti, spec.mti);
            assert_eq!(back.bitmap, spec.bitmap);
            assert_eq!(back.max_field, spec.max_field);
            for n in 2..=128 {
                let (a, b) = (spec.field(n).unwrap(), back.field(n).unwrap());
                // jPOS has no `an` class: text comes back as `ans`, which checks the same.
                let kind = if a.kind == Kind::An {
                    Kind::Ans
                } else {
                    a.kind
                };
                assert_eq!(
                    (kind, a.encoding, a.length, a.max_len),
                    (b.kind, b.encoding, b.length, b.max_len),
                    "field {n}"
                );
            }
        }
    }

    #[test]
    fn an_mti_that_is_not_four_fixed_digits_and_a_field_longer_than_a_frame_are_refused() {
        let doc = |mti_class: &str, field: &str| {
            format!(
                r#"<isopackager><isofield id="0" length="4" class="org.jpos.iso.{mti_class}"/><isofield id="1" length="16" class="org.jpos.iso.IFA_BITMAP"/>{field}</isopackager>"#
            )
        };
        assert!(from_xml("t", &doc("IFA_NUMERIC", "")).is_ok());
        assert!(from_xml("t", &doc("IFB_NUMERIC", "")).is_ok());
        for class in ["IFA_LLNUM", "IFB_BINARY", "IFA_BINARY", "IF_CHAR"] {
            let err = from_xml("t", &doc(class, "")).unwrap_err().to_string();
            assert!(err.contains("MTI"), "{class}: {err}");
        }
        let huge = r#"<isofield id="48" length="2147483648" class="org.jpos.iso.IFA_BINARY"/>"#;
        let err = from_xml("t", &doc("IFA_NUMERIC", huge))
            .unwrap_err()
            .to_string();
        assert!(err.contains("48"), "{err}");
    }

    /// A document with `attributes` on its root, an MTI, a two-part bitmap and `fields`.
    fn with_root(attributes: &str, fields: &str) -> String {
        format!(
            r#"<isopackager {attributes}><isofield id="0" length="4" class="org.jpos.iso.IFA_NUMERIC"/><isofield id="1" length="16" class="org.jpos.iso.IFA_BITMAP"/><isofield id="11" length="6" class="org.jpos.iso.IFA_NUMERIC"/>{fields}</isopackager>"#
        )
    }

    #[test]
    fn root_attributes_that_reshape_the_message_are_refused_by_name() {
        for (attributes, what) in [
            (r#"headerLength="5""#, "header_hex"),
            (r#"emitBitmap="false""#, "with a bitmap only"),
            (r#"bitmapField="65""#, "field 1 only"),
            (r#"firstField="3""#, "from field 2"),
            (r#"thirdBitmapField="65""#, "length 24"),
            (r#"maxValidField="200""#, "1 to 192"),
        ] {
            let err = from_xml("t", &with_root(attributes, ""))
                .unwrap_err()
                .to_string();
            let (name, value) = attributes.split_once('=').unwrap();
            assert!(
                err.starts_with(&format!("<isopackager {name}={value}>")) && err.contains(what),
                "{attributes}: {err}"
            );
        }
        // What jPOS takes when they are absent is accepted, written or not.
        let defaults = r#"headerLength="0" emitBitmap="true" bitmapField="1" firstField="2" maxValidField="128""#;
        assert!(from_xml("t", &with_root(defaults, "")).is_ok());
        // No field above maxValidField: jPOS would never read or write it.
        let above = r#"<isofield id="100" length="11" class="org.jpos.iso.IFA_LLNUM"/>"#;
        let err = from_xml("t", &with_root(r#"maxValidField="64""#, above))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("field 100") && err.contains("maxValidField"),
            "{err}"
        );
        assert!(from_xml("t", &with_root(r#"maxValidField="128""#, above)).is_ok());
    }

    #[test]
    fn a_field_id_written_with_spaces_is_the_same_field() {
        let track = r#"<isofield id=" 35 " length="37" class="org.jpos.iso.IFA_LLNUM"/>"#;
        let spec = from_xml("t", &with_root("", track)).unwrap();
        // Track data (z), as field 35 written without spaces: the separator is taken.
        assert_eq!(spec.field(35).unwrap().kind, Kind::Z);
    }

    #[test]
    fn a_document_without_mti_or_bitmap_is_refused() {
        let xml = r#"<isopackager><isofield id="2" length="19" class="org.jpos.iso.IFA_LLNUM"/></isopackager>"#;
        assert!(from_xml("t", xml).is_err());
        assert!(from_xml("t", "not xml <").is_err());
    }
}
