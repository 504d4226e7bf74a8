//! The traffic file: what `vpan loadgen` (and the demo) sends, as data a person can read.
//!
//! JSON Lines, one message per line, in the field notation of `fixtures/vectors/*.json`
//! (`"t"` for the MTI, field numbers as keys, text values, binary fields as upper-case hex),
//! so a scenario is written and reviewed like the codec's own test vectors:
//!
//! ```text
//! # a purchase, then its reversal
//! {"fields": {"t": "0100", "2": "4970101234567893", "3": "000000", "4": "000000012345"}, "expect": "00"}
//! {"fields": {"t": "0400", "2": "4970101234567893", "3": "000000", "4": "000000012345"}, "reverses": 0}
//! ```
//!
//! Besides `fields`, a line may carry `expect` (the DE 39 the scenario expects; loadgen
//! counts matches and mismatches), `reverses` (the 0-based index of an earlier *message* in
//! the file, comments and blank lines not counted: DE 90 is filled at send time from that
//! message as it was sent, and the reversal waits for its answer) and `name` (shown in
//! reports). Lines starting with `#` and blank lines are skipped.
//!
//! Every line is built into a [`Message`] at load time, so a bad value is refused with its
//! line and field number before anything is sent, and sending is a clone and three edits.

use std::collections::BTreeMap;
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
    #[error("traffic line {line}: field key {key:?} is not a field number")]
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
        index: usize,
    },
    /// No message at all.
    #[error("traffic file has no message")]
    Empty,
}

/// One line as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLine {
    fields: BTreeMap<String, String>,
    #[serde(default)]
    expect: Option<String>,
    #[serde(default)]
    reverses: Option<usize>,
    #[serde(default)]
    name: Option<String>,
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
        let text = std::fs::read_to_string(path).map_err(|source| TrafficError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Traffic::parse(&text, spec)
    }

    /// Builds a traffic file from its text.
    pub fn parse(text: &str, spec: &'static Spec) -> Result<Traffic, TrafficError> {
        let mut entries: Vec<Entry> = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            let trimmed = raw.trim();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            let raw: RawLine = serde_json::from_str(trimmed).map_err(|e| TrafficError::Json {
                line,
                message: json_error(&e),
            })?;
            let message = build(spec, &raw.fields, line)?;
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
                    return Err(TrafficError::Reverses { line, index });
                }
            }
            entries.push(Entry {
                line,
                name: raw.name,
                message,
                expect,
                reverses: raw.reverses,
            });
        }
        if entries.is_empty() {
            return Err(TrafficError::Empty);
        }
        let mut referenced = vec![false; entries.len()];
        for e in &entries {
            if let Some(slot) = e.reverses.and_then(|i| referenced.get_mut(i)) {
                *slot = true;
            }
        }
        Ok(Traffic {
            entries,
            referenced,
        })
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
        let n: usize = k.parse().map_err(|_| TrafficError::Key {
            line,
            key: k.chars().take(8).collect(),
        })?;
        m.set(n, v.as_bytes())
            .map_err(|source| TrafficError::Field { line, source })?;
    }
    Message::parse(spec, m.pack()).map_err(|source| TrafficError::Parse { line, source })
}

/// serde_json's message without the offending input (it could be a card number).
fn json_error(e: &serde_json::Error) -> String {
    let kind = match e.classify() {
        serde_json::error::Category::Syntax | serde_json::error::Category::Eof => "not valid JSON",
        serde_json::error::Category::Data => {
            "not of the form {\"fields\": {...}, \"expect\"?, \"reverses\"?, \"name\"?}"
        }
        serde_json::error::Category::Io => "unreadable",
    };
    format!("{kind} (column {})", e.column())
}

/// DE 90 (original data elements, n 42) for a message sent with this MTI, STAN, DE 7 and
/// DE 32: the acquirer is zero-padded on the left to 11 digits, the forwarder left zero.
pub fn original_data_elements(
    mti: &[u8; 4],
    stan: &[u8; 6],
    transmission_time: &[u8; 10],
    acquirer: &[u8],
) -> [u8; 42] {
    let mut out = [b'0'; 42];
    out[0..4].copy_from_slice(mti);
    out[4..10].copy_from_slice(stan);
    out[10..20].copy_from_slice(transmission_time);
    let acq = acquirer
        .get(acquirer.len().saturating_sub(11)..)
        .unwrap_or_default();
    let start = 31 - acq.len();
    if let Some(dst) = out.get_mut(start..31) {
        dst.copy_from_slice(acq);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const PURCHASE: &str = r#"{"fields": {"t": "0100", "2": "4970101234567893", "3": "000000", "4": "000000012345", "11": "000001", "32": "123456"}, "expect": "00"}"#;

    #[test]
    fn comments_and_blank_lines_are_skipped_and_lines_keep_their_file_numbers() {
        let text = format!("# scenario\n\n{PURCHASE}\n# end\n");
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
        let rev = r#"{"fields": {"t": "0400", "2": "4970101234567893", "4": "000000012345"}, "reverses": 0}"#;
        let t = Traffic::parse(&format!("{PURCHASE}\n{rev}\n"), Spec::iso87ascii()).unwrap();
        assert_eq!(t.entries()[1].reverses, Some(0));
        assert!(t.is_referenced(0));
        assert!(!t.is_referenced(1));
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
                r#"{"fields": {"t": "0100", "pan": "4970101234567893"}}"#,
                "is not a field number",
            ),
            (
                r#"{"fields": {"t": "0100"}, "expect": "000"}"#,
                "\"expect\" must be",
            ),
            (
                r#"{"fields": {"t": "0400"}, "reverses": 0}"#,
                "\"reverses\": 0",
            ),
            (
                r#"{"fields": {"t": "0100"}, "colour": 1}"#,
                "not of the form",
            ),
        ];
        for (text, want) in cases {
            let err = Traffic::parse(text, Spec::iso87ascii())
                .unwrap_err()
                .to_string();
            assert!(err.contains(want), "{text}: {err}");
            assert!(!err.contains("4970101234567893"), "{err}");
        }
        assert!(matches!(
            Traffic::parse("# nothing\n", Spec::iso87ascii()),
            Err(TrafficError::Empty)
        ));
    }

    #[test]
    fn original_data_elements_pad_the_acquirer_and_leave_the_forwarder_zero() {
        let de90 = original_data_elements(b"0100", b"000123", b"1126143015", b"123456");
        assert_eq!(&de90[..], b"010000012311261430150000012345600000000000");
    }
}
