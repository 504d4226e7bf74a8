//! The traffic file: what `vpan loadgen` (and the demo) sends, as data a person can read.
//!
//! JSON Lines, one message per line, in the field notation of `fixtures/vectors/*.json`
//! (`"t"` for the MTI, field numbers as keys, text values, binary fields as upper-case hex),
//! so a scenario is written and reviewed like the codec's own test vectors:
//!
//! ```text
//! # a purchase, then its reversal
//! {"fields": {"t": "0100", "2": "<card number>", "3": "000000", "4": "000000012345"}, "expect": "00"}
//! {"fields": {"t": "0400", "2": "<card number>", "3": "000000", "4": "000000012345"}, "reverses": 0}
//! ```
//!
//! Besides `fields`, a line may carry `expect` (the DE 39 the scenario expects; loadgen
//! counts matches and mismatches), `reverses` (the 0-based index of an earlier *message* in
//! the file, comments and blank lines not counted: DE 90 is filled at send time from that
//! message as it was sent, and the reversal waits for its answer), `repeats` (the same kind
//! of index: the line goes out with that message's STAN and DE 7, so the switch sees the
//! same transaction key again, after the first one's answer), `malformed` (`true`: the last
//! byte of the packed message is overwritten with 0xFF, a format error the switch answers
//! 30; the last field present must be a text or numeric one) and `name` (shown in
//! reports). Lines starting with `#` and blank lines are skipped.
//!
//! Virtual cards exist only once issued, so a value may name one instead of holding a
//! number: `${vpan.NAME}` and `${expiry.NAME}` are replaced at load time from a [`Bindings`]
//! (the `cards.json` that `vpan demo` writes, or `vpan loadgen --cards FILE`).
//!
//! Every line is built into a [`Message`] at load time, so a bad value is refused with its
//! line and field number before anything is sent, and sending is a clone and three edits.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::Path;

use serde::Deserialize;

use crate::iso8583::{EditError, Message, ParseError, Spec};

/// Why a traffic file cannot be used; every variant names the file line (1-based).
#[derive(Debug, thiserror::Error)]
pub enum TrafficError {
    /// The file cannot be read.
    #[error("cannot read traffic file {path}: {source}")]
    Io {
        /// The path given.
        path: String,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The line is not the expected JSON object.
    #[error("traffic line {line}: {message}")]
    Json {
        /// File line, 1-based.
        line: usize,
        /// What serde said (it never quotes values).
        message: String,
    },
    /// `"t"` is missing or is not four digits.
    #[error("traffic line {line}: \"t\" must be a four-digit MTI")]
    Mti {
        /// File line, 1-based.
        line: usize,
    },
    /// A key of `fields` is neither `"t"` nor a field number.
    #[error("traffic line {line}: field key {key} is not a field number")]
    Key {
        /// File line, 1-based.
        line: usize,
        /// The key as written (a number or a name, never a value).
        key: String,
    },
    /// A value does not fit its field.
    #[error("traffic line {line}: {source}")]
    Field {
        /// File line, 1-based.
        line: usize,
        /// The codec's error, naming the field.
        source: EditError,
    },
    /// The built message does not parse back (e.g. a field the spec needs is missing).
    #[error("traffic line {line}: the message does not parse back: {source}")]
    Parse {
        /// File line, 1-based.
        line: usize,
        /// The parser's error, naming the field.
        source: ParseError,
    },
    /// `expect` is not two characters.
    #[error("traffic line {line}: \"expect\" must be a two-character response code")]
    Expect {
        /// File line, 1-based.
        line: usize,
    },
    /// `reverses` does not name an earlier authorization or financial message, or the line
    /// is not a reversal.
    #[error(
        "traffic line {line}: \"reverses\": {index} must be the 0-based index of an earlier \
         01xx/02xx message, on a 04xx line"
    )]
    Reverses {
        /// File line, 1-based.
        line: usize,
        /// The index given.
        index: IndexGiven,
    },
    /// `repeats` does not name an earlier message of the same class.
    #[error(
        "traffic line {line}: \"repeats\": {index} must be the 0-based index of an earlier \
         message of the same MTI class"
    )]
    Repeats {
        /// File line, 1-based.
        line: usize,
        /// The index given.
        index: IndexGiven,
    },
    /// Both `repeats` and `reverses` on one line.
    #[error(
        "traffic line {line}: \"repeats\" and \"reverses\" cannot both be on one line: a \
         repeat is sent as the message it names was, DE 90 included, so a repeat of a \
         reversal names only the reversal"
    )]
    RepeatsAndReverses {
        /// File line, 1-based.
        line: usize,
    },
    /// `malformed` on a line whose last field as sent is not numeric (0xFF there would
    /// pass), or is DE 11 (broken, the STAN could not be read back, and no 30 would come).
    #[error(
        "traffic line {line}: \"malformed\" breaks the last field as sent, which must be \
         numeric and come after DE 11, the STAN the answer needs (field {field} is not)"
    )]
    Malformed {
        /// File line, 1-based.
        line: usize,
        /// The last field of the message.
        field: usize,
    },
    /// A `${...}` placeholder names no card of the bindings (or there are none).
    #[error(
        "traffic line {line}: {placeholder} names no issued card{hint}",
        hint = if *.bound { "" } else { " (pass the cards file: vpan loadgen --cards FILE)" }
    )]
    Placeholder {
        /// File line, 1-based.
        line: usize,
        /// The placeholder as written (a name, never a number).
        placeholder: String,
        /// Whether any bindings were given.
        bound: bool,
    },
    /// No message at all.
    #[error("traffic file has no message")]
    Empty,
}

/// A `reverses` or `repeats` index as an error shows it: one past the messages before its
/// line names none of them, and is not shown, since it could be any number (a card number
/// typed in the wrong place fits in a `u64`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexGiven {
    /// The index given.
    pub index: usize,
    /// How many messages came before its line.
    pub earlier: usize,
}

impl std::fmt::Display for IndexGiven {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.index < self.earlier {
            write!(f, "{}", self.index)
        } else {
            write!(f, "(past the {} messages before this line)", self.earlier)
        }
    }
}

/// A virtual card a traffic file names: what `${vpan.NAME}` and `${expiry.NAME}` become.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct BoundCard {
    /// The virtual card number.
    pub vpan: String,
    /// Its virtual expiry, YYMM.
    pub expiry: String,
}

/// Card names to issued cards, as read from a `cards.json` (`{"NAME": {"vpan", "expiry"}}`).
pub type Bindings = BTreeMap<String, BoundCard>;

/// A traffic file's lines, read one at a time: a file of a million lines is not held whole
/// beside the messages built from it (it would be a third more memory at the peak). Bytes
/// that are not UTF-8 (a Latin-1 merchant name) are refused naming their line, as any
/// other fault of a line is.
fn read_lines(
    path: &Path,
) -> Result<impl Iterator<Item = Result<String, TrafficError>>, TrafficError> {
    use std::io::BufRead;
    let unreadable = |source| TrafficError::Io {
        path: path.display().to_string(),
        source,
    };
    let file = std::fs::File::open(path).map_err(unreadable)?;
    let shown = path.display().to_string();
    let lines = std::io::BufReader::with_capacity(1 << 16, file).split(b'\n');
    Ok(lines.enumerate().map(move |(i, bytes)| {
        let bytes = bytes.map_err(|source| TrafficError::Io {
            path: shown.clone(),
            source,
        })?;
        String::from_utf8(bytes).map_err(|_| TrafficError::Json {
            line: i + 1,
            message:
                "not UTF-8 text (JSON is UTF-8: write accented letters as such, or as \\u escapes)"
                    .into(),
        })
    }))
}

/// Reads a cards file for [`Traffic::parse_bound`].
pub fn load_bindings(path: &Path) -> Result<Bindings, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read cards file {}: {e}", path.display()))?;
    let text = super::without_byte_order_mark(&text);
    if text.trim_start().starts_with('[') {
        // The other cards.json: `vpan traffic`'s list of cards to issue, not their numbers.
        return Err(format!(
            "cards file {}: a list of cards to issue (as `vpan traffic` writes), not the issued cards' numbers: \
             run `vpan demo --scenario DIR --keep-running` on it and pass the cards.json the demo writes in its data directory",
            path.display()
        ));
    }
    serde_json::from_str(text).map_err(|e| {
        let kind = match e.classify() {
            serde_json::error::Category::Data => {
                "not a JSON object of {\"NAME\": {\"vpan\", \"expiry\"}}"
            }
            _ => "not valid JSON",
        };
        format!(
            "cards file {}: {kind} (line {}, column {})",
            path.display(),
            e.line(),
            e.column()
        )
    })
}

/// One line as written. Each value's type is checked here, so that a wrong one is refused
/// naming its key and what it must be: serde's own messages quote the value they refuse,
/// which may be a card number.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLine {
    fields: RawFields,
    #[serde(default, deserialize_with = "checked::expect")]
    expect: Option<String>,
    #[serde(default, deserialize_with = "checked::reverses")]
    reverses: Option<usize>,
    #[serde(default, deserialize_with = "checked::repeats")]
    repeats: Option<usize>,
    #[serde(default, deserialize_with = "checked::flag")]
    malformed: bool,
    #[serde(default, deserialize_with = "checked::name")]
    name: Option<String>,
}

/// `fields` as written: a text value under each key, no key twice (JSON would keep the
/// last silently, and the line would send something other than what it shows).
struct RawFields(BTreeMap<String, String>);

impl<'de> Deserialize<'de> for RawFields {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<RawFields, D::Error> {
        struct Fields;
        impl<'de> serde::de::Visitor<'de> for Fields {
            type Value = RawFields;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an object of field numbers to text")
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<RawFields, A::Error> {
                let mut fields = BTreeMap::new();
                while let Some(key) = map.next_key::<String>()? {
                    let value: serde_json::Value = map.next_value()?;
                    let shown = checked::shown_key(&key);
                    let serde_json::Value::String(text) = value else {
                        return Err(checked::refused(format!(
                            "field {shown} must be text in quotes (upper-case hex for a binary field), not {}",
                            checked::kind(&value)
                        )));
                    };
                    if fields.insert(key, text).is_some() {
                        return Err(checked::refused(format!("field {shown} appears twice")));
                    }
                }
                Ok(RawFields(fields))
            }
        }
        d.deserialize_map(Fields)
    }
}

/// The checks of [`RawLine`]'s values, with messages that name the key, never the value.
mod checked {
    use serde::Deserialize;
    use serde::de::Error;
    use serde_json::Value;

    /// Marks a message of these checks, which [`super::json_error`] shows as it is (it
    /// shows none of serde's own).
    pub(super) const MARK: &str = "checked: ";

    pub(super) fn refused<E: Error>(message: String) -> E {
        E::custom(format!("{MARK}{message}"))
    }

    /// A key as a message may show it: a field number or a name is a short word; anything
    /// else might be a card number typed in the wrong place, or hold characters a terminal
    /// would act on.
    pub(super) fn shown_key(key: &str) -> String {
        if is_word(key) {
            format!("{key:?}")
        } else {
            format!("(a key of {} characters)", key.chars().count())
        }
    }

    /// One to eight ASCII letters, digits or `_`.
    pub(super) fn is_word(key: &str) -> bool {
        (1..=8).contains(&key.len()) && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
    }

    /// What a JSON value is, for a message.
    pub(super) fn kind(v: &Value) -> &'static str {
        match v {
            Value::Null => "null",
            Value::Bool(_) => "true or false",
            Value::Number(_) => "a number",
            Value::String(_) => "text",
            Value::Array(_) => "a list",
            Value::Object(_) => "an object",
        }
    }

    /// `expect`.
    pub(super) fn expect<'de, D: serde::Deserializer<'de>>(
        d: D,
    ) -> Result<Option<String>, D::Error> {
        text(d, "expect")
    }

    /// `name`.
    pub(super) fn name<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
        text(d, "name")
    }

    /// `reverses`.
    pub(super) fn reverses<'de, D: serde::Deserializer<'de>>(
        d: D,
    ) -> Result<Option<usize>, D::Error> {
        index(d, "reverses")
    }

    /// `repeats`.
    pub(super) fn repeats<'de, D: serde::Deserializer<'de>>(
        d: D,
    ) -> Result<Option<usize>, D::Error> {
        index(d, "repeats")
    }

    fn text<'de, D: serde::Deserializer<'de>>(d: D, key: &str) -> Result<Option<String>, D::Error> {
        match Value::deserialize(d)? {
            Value::String(s) => Ok(Some(s)),
            // As before these checks: `null` is "not given".
            Value::Null => Ok(None),
            other => Err(refused(format!(
                "\"{key}\" must be text in quotes, not {}",
                kind(&other)
            ))),
        }
    }

    fn index<'de, D: serde::Deserializer<'de>>(d: D, key: &str) -> Result<Option<usize>, D::Error> {
        let v = Value::deserialize(d)?;
        if v.is_null() {
            return Ok(None);
        }
        v.as_u64()
            .and_then(|n| usize::try_from(n).ok())
            .map(Some)
            .ok_or_else(|| {
                refused(format!(
                    "\"{key}\" must be a whole number, the 0-based index of an earlier message, not {}",
                    if v.is_number() { "a number that is not a whole one from 0 up" } else { kind(&v) }
                ))
            })
    }

    /// `malformed`.
    pub(super) fn flag<'de, D: serde::Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
        match Value::deserialize(d)? {
            Value::Bool(b) => Ok(b),
            other => Err(refused(format!(
                "\"malformed\" must be true or false, not {}",
                kind(&other)
            ))),
        }
    }
}

/// One message of the scenario, ready to send.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Line in the file (1-based), for reports that point back at it.
    pub line: usize,
    /// Optional label from the file.
    pub name: Option<String>,
    /// The message as built from the file; DE 7, DE 11 (and DE 90) are set at send time.
    pub message: Message,
    /// The DE 39 the scenario expects, if it says.
    pub expect: Option<[u8; 2]>,
    /// For a reversal: the index of the message it reverses.
    pub reverses: Option<usize>,
    /// For a repeat: the index of the message whose STAN and DE 7 it reuses.
    pub repeats: Option<usize>,
    /// Sent with its last byte broken (a format error).
    pub malformed: bool,
}

impl Entry {
    /// The earlier message this one waits for (a reversal's original, a repeat's first).
    pub fn refers_to(&self) -> Option<usize> {
        self.reverses.or(self.repeats)
    }
}

/// A loaded traffic file: the messages in order.
#[derive(Debug, Clone)]
pub struct Traffic {
    /// The messages, comments and blank lines dropped.
    entries: Vec<Entry>,
    /// `referenced[i]`: some later reversal refers to message `i`, so what was sent for it
    /// has to be remembered.
    referenced: Vec<bool>,
}

impl Traffic {
    /// Reads and builds a traffic file.
    pub fn load(path: &Path, spec: &'static Spec) -> Result<Traffic, TrafficError> {
        Traffic::parse_with(read_lines(path)?, spec, None)
    }

    /// Reads and builds a traffic file whose `${...}` placeholders name these cards.
    pub fn load_bound(
        path: &Path,
        spec: &'static Spec,
        cards: &Bindings,
    ) -> Result<Traffic, TrafficError> {
        Traffic::parse_with(read_lines(path)?, spec, Some(cards))
    }

    /// Builds a traffic file from its text; a `${...}` placeholder is an error.
    pub fn parse(text: &str, spec: &'static Spec) -> Result<Traffic, TrafficError> {
        Traffic::parse_with(text.lines().map(|l| Ok(l.to_owned())), spec, None)
    }

    /// Builds a traffic file from its text, filling `${vpan.NAME}` / `${expiry.NAME}`.
    pub fn parse_bound(
        text: &str,
        spec: &'static Spec,
        cards: &Bindings,
    ) -> Result<Traffic, TrafficError> {
        Traffic::parse_with(text.lines().map(|l| Ok(l.to_owned())), spec, Some(cards))
    }

    /// Builds a traffic file from its lines, in order.
    fn parse_with(
        lines: impl Iterator<Item = Result<String, TrafficError>>,
        spec: &'static Spec,
        cards: Option<&Bindings>,
    ) -> Result<Traffic, TrafficError> {
        let mut entries: Vec<Entry> = Vec::new();
        for (i, raw) in lines.enumerate() {
            let line = i + 1;
            let raw = raw?;
            let raw = if line == 1 {
                super::without_byte_order_mark(&raw)
            } else {
                &raw
            };
            let trimmed = raw.trim();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            let raw: RawLine = serde_json::from_str(trimmed).map_err(|e| TrafficError::Json {
                line,
                message: json_error(&e, trimmed),
            })?;
            let fields = bind(raw.fields.0, cards, line)?;
            let message = build(spec, &fields, line)?;
            let expect = match raw.expect.as_deref() {
                None => None,
                Some(e) => Some(
                    <[u8; 2]>::try_from(e.as_bytes()).map_err(|_| TrafficError::Expect { line })?,
                ),
            };
            if let Some(index) = raw.reverses {
                let original_ok = entries.get(index).is_some_and(|o| {
                    let m = o.message.mti();
                    m[1] == b'1' || m[1] == b'2'
                });
                if !original_ok || message.mti()[1] != b'4' {
                    let index = IndexGiven {
                        index,
                        earlier: entries.len(),
                    };
                    return Err(TrafficError::Reverses { line, index });
                }
            }
            if raw.malformed {
                // The last field as sent: DE 7 and DE 11 (and DE 90 of a reversal) are set
                // at send time.
                let set_at_send = if raw.reverses.is_some() { 90 } else { 11 };
                let last = message.field_numbers().last().unwrap_or(0).max(set_at_send);
                let numeric = spec
                    .field(last)
                    .is_some_and(|f| matches!(f.kind, crate::iso8583::Kind::N));
                if !numeric || last == 11 {
                    return Err(TrafficError::Malformed { line, field: last });
                }
            }
            if let Some(index) = raw.repeats {
                if raw.reverses.is_some() {
                    return Err(TrafficError::RepeatsAndReverses { line });
                }
                let same_class = entries
                    .get(index)
                    .is_some_and(|o| o.message.mti()[..3] == message.mti()[..3]);
                if !same_class {
                    let index = IndexGiven {
                        index,
                        earlier: entries.len(),
                    };
                    return Err(TrafficError::Repeats { line, index });
                }
            }
            entries.push(Entry {
                line,
                name: raw.name,
                message,
                expect,
                reverses: raw.reverses,
                repeats: raw.repeats,
                malformed: raw.malformed,
            });
        }
        if entries.is_empty() {
            return Err(TrafficError::Empty);
        }
        let mut referenced = vec![false; entries.len()];
        for e in &entries {
            if let Some(slot) = e.refers_to().and_then(|i| referenced.get_mut(i)) {
                *slot = true;
            }
        }
        Ok(Traffic {
            entries,
            referenced,
        })
    }

    /// The messages cut into consecutive pieces of at least `size` (the last may be
    /// shorter), never between a message and a later one that refers to it. The load
    /// generator hands out one piece at a time to a connection, so that every connection
    /// has work however short the load, and a reversal or a repeat still goes on its
    /// original's connection, after its answer.
    pub fn pieces(&self, size: usize) -> Vec<Range<usize>> {
        let n = self.entries.len();
        // crossing[i]: how many references a cut just before message i would separate,
        // as a difference array over i.
        let mut crossing = vec![0i32; n + 1];
        for (j, e) in self.entries.iter().enumerate() {
            if let Some(o) = e.refers_to().filter(|&o| o < j) {
                crossing[o + 1] += 1;
                crossing[j + 1] -= 1;
            }
        }
        let mut pieces = Vec::new();
        let (mut start, mut open) = (0, 0);
        for (i, step) in crossing.iter().enumerate().take(n).skip(1) {
            open += step;
            if i - start >= size.max(1) && open == 0 {
                pieces.push(start..i);
                start = i;
            }
        }
        pieces.push(start..n);
        pieces
    }

    /// The messages in file order.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// Number of messages.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Never true for a loaded file (an empty one is refused); here for clippy.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// True when a later reversal refers to message `index`.
    pub fn is_referenced(&self, index: usize) -> bool {
        self.referenced.get(index).copied().unwrap_or(false)
    }
}

/// Replaces the `${vpan.NAME}` / `${expiry.NAME}` values by the named card's.
fn bind(
    mut fields: BTreeMap<String, String>,
    cards: Option<&Bindings>,
    line: usize,
) -> Result<BTreeMap<String, String>, TrafficError> {
    for value in fields.values_mut() {
        let Some(inner) = value.strip_prefix("${").and_then(|v| v.strip_suffix('}')) else {
            continue;
        };
        let unknown = || TrafficError::Placeholder {
            line,
            placeholder: format!("${{{}}}", inner.chars().take(40).collect::<String>()),
            bound: cards.is_some(),
        };
        let (what, name) = inner.split_once('.').ok_or_else(unknown)?;
        let card = cards.and_then(|c| c.get(name)).ok_or_else(unknown)?;
        *value = match what {
            "vpan" => card.vpan.clone(),
            "expiry" => card.expiry.clone(),
            _ => return Err(unknown()),
        };
    }
    Ok(fields)
}

/// Builds one message from its fields and parses it back, so that the template is a
/// parsed message (cheap to edit) and known to be valid.
fn build(
    spec: &'static Spec,
    fields: &BTreeMap<String, String>,
    line: usize,
) -> Result<Message, TrafficError> {
    let mti: [u8; 4] = fields
        .get("t")
        .and_then(|t| <[u8; 4]>::try_from(t.as_bytes()).ok())
        .ok_or(TrafficError::Mti { line })?;
    let mut m = Message::new(spec, &mti).map_err(|_| TrafficError::Mti { line })?;
    for (k, v) in fields {
        if k == "t" {
            continue;
        }
        // At most three digits: a longer number is no field (and may be a card number).
        let n: usize =
            k.parse()
                .ok()
                .filter(|_| k.len() <= 3)
                .ok_or_else(|| TrafficError::Key {
                    line,
                    key: checked::shown_key(k),
                })?;
        m.set(n, v.as_bytes())
            .map_err(|source| TrafficError::Field { line, source })?;
    }
    Message::parse(spec, m.pack()).map_err(|source| TrafficError::Parse { line, source })
}

/// The keys a line may have.
const LINE_KEYS: [&str; 6] = [
    "fields",
    "expect",
    "reverses",
    "repeats",
    "malformed",
    "name",
];

/// What is wrong with a line serde refused, said without any of its values: these checks'
/// own messages, then serde's about a line's keys rebuilt from the line itself (serde
/// quotes an unknown key as written, and a key can hold anything); for anything else only
/// the kind of fault and where.
fn json_error(e: &serde_json::Error, text: &str) -> String {
    let said = e.to_string();
    // serde_json ends its messages with where: the column is given below.
    let said = said.rsplit_once(" at line ").map_or(&said[..], |(m, _)| m);
    let at = e.column();
    if let Some(own) = said.strip_prefix(checked::MARK) {
        return format!("{own} (column {at})");
    }
    if said.starts_with("unknown field `")
        && let Ok(keys) = serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(text)
        && let Some(unknown) = keys.keys().find(|k| !LINE_KEYS.contains(&k.as_str()))
    {
        return format!(
            "unknown key {}: a line's keys are {} (column {at})",
            checked::shown_key(unknown),
            LINE_KEYS.join(", ")
        );
    }
    if let Some(key) = LINE_KEYS
        .iter()
        .find(|k| said == format!("duplicate field `{k}`"))
    {
        return format!("key \"{key}\" appears twice (column {at})");
    }
    if said == "missing field `fields`" {
        return format!("\"fields\" is missing (column {at})");
    }
    let kind = match e.classify() {
        serde_json::error::Category::Syntax | serde_json::error::Category::Eof => "not valid JSON",
        serde_json::error::Category::Data => {
            "not of the form {\"fields\": {...}, \"expect\"?, \"reverses\"?, \"repeats\"?, \
             \"malformed\"?, \"name\"?}"
        }
        serde_json::error::Category::Io => "unreadable",
    };
    format!("{kind} (column {at})")
}

pub use crate::cards::request::original_data_elements;

#[cfg(test)]
mod tests {
    use super::*;

    /// One made-up card for the whole module's tests.
    fn pan() -> &'static str {
        static PAN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
        PAN.get_or_init(|| crate::pan::test_pan("497010"))
    }

    /// A purchase line on [`pan`].
    fn purchase() -> String {
        line(
            r#"{"fields": {"t": "0100", "2": "PAN", "3": "000000", "4": "000000012345", "11": "000001", "32": "123456"}, "expect": "00"}"#,
        )
    }

    /// A traffic line with `PAN` replaced by the test card.
    fn line(template: &str) -> String {
        template.replace("PAN", pan())
    }

    #[test]
    fn bytes_that_are_not_utf8_are_refused_naming_their_line() {
        let file = tempfile::NamedTempFile::new().unwrap();
        let mut bytes = format!("{}\n# caf", purchase()).into_bytes();
        bytes.extend_from_slice(&[0xE9, b'\n']);
        std::fs::write(file.path(), bytes).unwrap();
        let e = Traffic::load(file.path(), Spec::iso87ascii()).unwrap_err();
        assert!(
            e.to_string().starts_with("traffic line 2: not UTF-8 text"),
            "{e}"
        );
    }

    #[test]
    fn a_byte_order_mark_opening_the_file_is_skipped_and_windows_line_ends_read() {
        let file = tempfile::NamedTempFile::new().unwrap();
        let text = format!("\u{feff}# made on Windows\r\n{}\r\n", purchase());
        std::fs::write(file.path(), text).unwrap();
        let t = Traffic::load(file.path(), Spec::iso87ascii()).unwrap();
        assert_eq!(t.len(), 1);
        assert_eq!(t.entries()[0].line, 2);
        // Only at the start of the file: elsewhere it is a fault of its line.
        let text = format!("{}\n\u{feff}{}\n", purchase(), purchase());
        let e = Traffic::parse(&text, Spec::iso87ascii()).unwrap_err();
        assert!(e.to_string().starts_with("traffic line 2:"), "{e}");
    }

    #[test]
    fn pieces_never_part_a_reversal_or_a_repeat_from_its_original() {
        let reversal = line(
            r#"{"fields": {"t": "0400", "2": "PAN", "3": "000000", "4": "000000012345", "11": "000002", "32": "123456"}, "reverses": 1}"#,
        );
        let repeat = line(
            r#"{"fields": {"t": "0101", "2": "PAN", "3": "000000", "4": "000000012345", "11": "000003", "32": "123456"}, "repeats": 3}"#,
        );
        // 0 purchase, 1 purchase, 2 its reversal, 3 purchase, 4 purchase, 5 repeat of 3, 6 purchase
        let text = [
            purchase(),
            purchase(),
            reversal,
            purchase(),
            purchase(),
            repeat,
            purchase(),
        ]
        .join("\n");
        let t = Traffic::parse(&text, Spec::iso87ascii()).unwrap();
        assert_eq!(t.pieces(1), vec![0..1, 1..3, 3..6, 6..7]);
        assert_eq!(t.pieces(2), vec![0..3, 3..6, 6..7]);
        assert_eq!(t.pieces(100), vec![0..7]);
        assert_eq!(t.pieces(0), t.pieces(1), "at least one message a piece");
    }

    #[test]
    fn comments_and_blank_lines_are_skipped_and_lines_keep_their_file_numbers() {
        let text = format!("# scenario\n\n{}\n# end\n", purchase());
        let t = Traffic::parse(&text, Spec::iso87ascii()).unwrap();
        assert_eq!(t.len(), 1);
        let e = &t.entries()[0];
        assert_eq!(e.line, 3);
        assert_eq!(e.expect, Some(*b"00"));
        assert_eq!(e.message.mti(), *b"0100");
        assert_eq!(e.message.amount_transaction(), Some(12345));
    }

    #[test]
    fn a_reversal_names_an_earlier_message_by_its_index() {
        let rev =
            line(r#"{"fields": {"t": "0400", "2": "PAN", "4": "000000012345"}, "reverses": 0}"#);
        let t = Traffic::parse(&format!("{}\n{rev}\n", purchase()), Spec::iso87ascii()).unwrap();
        assert_eq!(t.entries()[1].reverses, Some(0));
        assert!(t.is_referenced(0));
        assert!(!t.is_referenced(1));
    }

    #[test]
    fn a_line_that_both_repeats_and_reverses_is_refused_for_that() {
        let rev =
            line(r#"{"fields": {"t": "0400", "2": "PAN", "4": "000000012345"}, "reverses": 0}"#);
        let both = line(
            r#"{"fields": {"t": "0401", "2": "PAN", "4": "000000012345"}, "reverses": 0, "repeats": 1}"#,
        );
        let e = Traffic::parse(
            &format!("{}\n{rev}\n{both}\n", purchase()),
            Spec::iso87ascii(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("traffic line 3: \"repeats\" and \"reverses\" cannot both be"),
            "{e}"
        );
    }

    #[test]
    fn bad_lines_are_refused_with_their_line_and_field_and_no_value() {
        let cases: &[(&str, &str)] = &[
            ("{not json", "traffic line 1: not valid JSON"),
            (r#"{"fields": {"2": "1"}}"#, "traffic line 1: \"t\" must be"),
            (
                r#"{"fields": {"t": "0100", "4": "12AB"}}"#,
                "traffic line 1: field 4",
            ),
            (
                r#"{"fields": {"t": "0100", "pan": "PAN"}}"#,
                "is not a field number",
            ),
            (
                r#"{"fields": {"t": "0100"}, "expect": "000"}"#,
                "\"expect\" must be",
            ),
            (
                r#"{"fields": {"t": "0400"}, "reverses": 0}"#,
                "\"reverses\": (past the 0 messages before this line) must be",
            ),
            (
                r#"{"fields": {"t": "0100"}, "colour": 1}"#,
                "unknown key \"colour\": a line's keys are fields, expect, reverses, repeats, malformed, name",
            ),
            (
                r#"{"fields": {"t": "0100"}, "PAN": 1}"#,
                "unknown key (a key of 16 characters)",
            ),
            (r#"{"expect": "00"}"#, "\"fields\" is missing"),
            (
                r#"{"fields": {"t": "0100", "4": 12345}}"#,
                "field \"4\" must be text in quotes (upper-case hex for a binary field), not a number (column",
            ),
            (
                r#"{"fields": {"t": "0100", "PAN": 12345}}"#,
                "field (a key of",
            ),
            (
                r#"{"fields": {"t": "0100", "2": "PAN", "2": "PAN"}}"#,
                "field \"2\" appears twice",
            ),
            (
                r#"{"fields": {"t": "0100"}, "fields": {"t": "0100"}}"#,
                "key \"fields\" appears twice",
            ),
            (
                r#"{"fields": {"t": "0100"}, "reverses": "PAN"}"#,
                "\"reverses\" must be a whole number, the 0-based index of an earlier message, not text",
            ),
            (
                r#"{"fields": {"t": "0100"}, "repeats": -1}"#,
                "\"repeats\" must be a whole number, the 0-based index of an earlier message, not a number that is not a whole one from 0 up",
            ),
            (
                r#"{"fields": {"t": "0100"}, "expect": 0}"#,
                "\"expect\" must be text in quotes, not a number",
            ),
            (
                r#"{"fields": {"t": "0100"}, "malformed": "PAN"}"#,
                "\"malformed\" must be true or false, not text",
            ),
            (r#"{"fields": ["PAN"]}"#, "not of the form"),
            (r#"{"fields": "PAN"}"#, "not of the form"),
            (
                r#"{"fields": {"t": "0400"}, "reverses": PAN}"#,
                "\"reverses\": (past the 0 messages before this line)",
            ),
            (
                r#"{"fields": {"t": "0100"}, "a`PAN": 1}"#,
                "unknown key (a key of 18 characters)",
            ),
            (
                r#"{"fields": {"t": "0100"}, "a`, PAN`, expected": 1}"#,
                "unknown key (a key of 31 characters)",
            ),
            (
                r#"{"fields": {"t": "0100", "PAN": "1"}}"#,
                "field key (a key of 16 characters) is not a field number",
            ),
        ];
        for (text, want) in cases {
            let text = &line(text);
            let err = Traffic::parse(text, Spec::iso87ascii())
                .unwrap_err()
                .to_string();
            assert!(err.contains(want), "{text}: {err}");
            assert!(!err.contains(pan()), "{err}");
        }
        assert!(matches!(
            Traffic::parse("# nothing\n", Spec::iso87ascii()),
            Err(TrafficError::Empty)
        ));
        // `null` is "not given", as it was before the values' types were checked.
        let nulls = r#"{"fields": {"t": "0800", "70": "301"}, "name": null, "expect": null, "reverses": null, "repeats": null}"#;
        let t = Traffic::parse(nulls, Spec::iso87ascii()).unwrap();
        assert_eq!(t.entries()[0].name, None);
        assert_eq!(t.entries()[0].refers_to(), None);
    }

    /// The virtual card the placeholder tests bind.
    fn test_vpan() -> String {
        pan().to_string()
    }

    fn bindings() -> Bindings {
        Bindings::from([(
            "gift".to_string(),
            BoundCard {
                vpan: test_vpan(),
                expiry: "2912".into(),
            },
        )])
    }

    #[test]
    fn a_cards_file_may_open_with_a_byte_order_mark() {
        let file = tempfile::NamedTempFile::new().unwrap();
        let text = format!(
            "\u{feff}{{\"gift\": {{\"vpan\": \"{}\", \"expiry\": \"2912\"}}}}",
            test_vpan()
        );
        std::fs::write(file.path(), text).unwrap();
        let read = load_bindings(file.path()).unwrap();
        assert_eq!(read["gift"].vpan, test_vpan());
    }

    #[test]
    fn placeholders_become_the_named_card_and_an_unknown_name_is_refused() {
        let line = r#"{"fields": {"t": "0100", "2": "${vpan.gift}", "4": "000000000100", "14": "${expiry.gift}"}}"#;
        let t = Traffic::parse_bound(line, Spec::iso87ascii(), &bindings()).unwrap();
        let m = &t.entries()[0].message;
        assert_eq!(m.text(2).as_deref(), Some(test_vpan().as_bytes()));
        assert_eq!(m.text(14).as_deref(), Some(&b"2912"[..]));

        let err = Traffic::parse(line, Spec::iso87ascii())
            .unwrap_err()
            .to_string();
        assert!(err.contains(".gift} names no issued card"), "{err}");
        assert!(err.contains("--cards FILE"), "{err}");
        let other = line.replace("vpan.gift", "vpan.other");
        let err = Traffic::parse_bound(&other, Spec::iso87ascii(), &bindings())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("traffic line 1: ${vpan.other} names no issued card"),
            "{err}"
        );
    }

    #[test]
    fn a_repeat_names_an_earlier_message_of_its_class() {
        let repeat = line(
            r#"{"fields": {"t": "0101", "2": "PAN", "3": "000000", "4": "000000012345"}, "repeats": 0}"#,
        );
        let t = Traffic::parse(&format!("{}\n{repeat}\n", purchase()), Spec::iso87ascii()).unwrap();
        assert_eq!(t.entries()[1].refers_to(), Some(0));
        assert!(t.is_referenced(0));
        let wrong = repeat.replace("0101", "0201");
        let err = Traffic::parse(&format!("{}\n{wrong}\n", purchase()), Spec::iso87ascii())
            .unwrap_err()
            .to_string();
        assert!(err.contains("traffic line 2: \"repeats\": 0"), "{err}");
    }

    #[test]
    fn malformed_needs_a_numeric_last_field_to_break() {
        let ok = r#"{"fields": {"t": "0100", "3": "000000", "4": "000000000100", "32": "123456"}, "malformed": true}"#;
        assert!(Traffic::parse(ok, Spec::iso87ascii()).unwrap().entries()[0].malformed);
        // Without a field after DE 11, the STAN set at send time would be what breaks.
        let stan_last =
            r#"{"fields": {"t": "0100", "3": "000000", "4": "000000000100"}, "malformed": true}"#;
        let err = Traffic::parse(stan_last, Spec::iso87ascii())
            .unwrap_err()
            .to_string();
        assert!(err.contains("field 11 is not"), "{err}");
        let text_last = r#"{"fields": {"t": "0100", "4": "000000000100", "41": "TERM0001"}, "malformed": true}"#;
        let err = Traffic::parse(text_last, Spec::iso87ascii())
            .unwrap_err()
            .to_string();
        assert!(err.contains("field 41 is not"), "{err}");
    }

    #[test]
    fn original_data_elements_pad_the_acquirer_and_leave_the_forwarder_zero() {
        let de90 = original_data_elements(b"0100", b"000123", b"1126143015", b"123456");
        assert_eq!(&de90[..], b"010000012311261430150000012345600000000000");
    }
}
