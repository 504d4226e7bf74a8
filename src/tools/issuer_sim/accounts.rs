//! The simulator's accounts file: JSON or CSV, every line checked.

use std::path::Path;

use super::SimError;
use crate::pan::Pan;

/// One accounts-file entry as written in JSON.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct AccountLine {
    pan: String,
    balance: i64,
}

/// Reads an accounts file: JSON (an array of `{"pan", "balance"}`) or CSV (`pan,balance`
/// per line, an optional header line, `#` comments). The form is told by the first
/// character that is not blank: `[` for JSON.
pub fn load_accounts(path: &Path) -> Result<Vec<(Pan, i64)>, SimError> {
    let err = |message: String| SimError::Accounts {
        path: path.display().to_string(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    parse_accounts(&text).map_err(err)
}

/// [`load_accounts`] of a file's text; the error names the line or entry, never the card
/// number. A file of no accounts, a card number that fails the Luhn check (every request
/// on it would get 14) and a card given twice are refused: each is a mistake in the file
/// that would otherwise show only as a load test's odd answers.
pub fn parse_accounts(text: &str) -> Result<Vec<(Pan, i64)>, String> {
    let text = crate::tools::without_byte_order_mark(text);
    let mut accounts = Accounts::default();
    let trimmed = text.trim_start();
    if trimmed.starts_with('{') {
        return Err("a JSON object: expected an array of {\"pan\", \"balance\"} objects".into());
    }
    if trimmed.starts_with('[') {
        let lines: Vec<AccountLine> = serde_json::from_str(text).map_err(|e| {
            format!(
                "not a JSON array of {{\"pan\", \"balance\"}} (line {}, column {})",
                e.line(),
                e.column()
            )
        })?;
        for (i, l) in lines.into_iter().enumerate() {
            accounts.add(&format!("entry {}", i + 1), &l.pan, l.balance)?;
        }
    } else {
        for (i, line) in text.lines().enumerate() {
            let line_no = i + 1;
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (pan, balance) = line
                .split_once(',')
                .ok_or_else(|| format!("line {line_no}: expected pan,balance"))?;
            let (pan, balance) = (pan.trim(), balance.trim());
            if accounts.list.is_empty() && pan.eq_ignore_ascii_case("pan") {
                continue;
            }
            // A third column would otherwise be read as part of the balance, and the error
            // would blame a balance that is right.
            if balance.contains(',') {
                let columns = line.split(',').count();
                return Err(format!(
                    "line {line_no}: {columns} columns, expected two: pan,balance"
                ));
            }
            let balance = balance
                .parse()
                .map_err(|_| format!("line {line_no}: balance is not a whole number"))?;
            accounts.add(&format!("line {line_no}"), pan, balance)?;
        }
    }
    if accounts.list.is_empty() {
        return Err("no accounts in the file".into());
    }
    Ok(accounts.list)
}

/// The accounts read so far, and where each card was.
#[derive(Default)]
struct Accounts {
    list: Vec<(Pan, i64)>,
    seen: std::collections::HashMap<Pan, String>,
}

impl Accounts {
    /// Adds the account at `place` (`line 3`, `entry 2`), or says what is wrong with it.
    fn add(&mut self, place: &str, pan: &str, balance: i64) -> Result<(), String> {
        let pan = Pan::from_digits_checked(pan.as_bytes()).map_err(|e| format!("{place}: {e}"))?;
        if let Some(first) = self.seen.get(&pan) {
            return Err(format!("{place}: the same card as {first}"));
        }
        self.seen.insert(pan.clone(), place.to_string());
        self.list.push((pan, balance));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One made-up card for the module's tests.
    fn pan_text() -> &'static str {
        static PAN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
        PAN.get_or_init(|| crate::pan::test_pan("497010"))
    }

    #[test]
    fn an_accounts_file_with_a_mistake_is_refused_naming_the_line_never_the_card() {
        let card = pan_text();
        let other = crate::pan::test_pan("497010");
        let mut bad_luhn = card.to_string().into_bytes();
        let last = bad_luhn.len() - 1;
        bad_luhn[last] = b'0' + (bad_luhn[last] - b'0' + 1) % 10;
        let bad_luhn = String::from_utf8(bad_luhn).unwrap();
        assert_eq!(
            parse_accounts(&format!("pan,balance\n{card},100\n{other},5\n"))
                .unwrap()
                .len(),
            2
        );
        // A byte order mark opening the file is no mistake, in either form.
        for text in [
            format!("\u{feff}pan,balance\n{card},100\n"),
            format!("\u{feff}[{{\"pan\": \"{card}\", \"balance\": 1}}]"),
        ] {
            assert_eq!(parse_accounts(&text).unwrap().len(), 1);
        }
        for (text, error) in [
            (
                format!("{card},100\n# two\n{card},5\n"),
                "line 3: the same card as line 1",
            ),
            (
                format!("{bad_luhn},100\n"),
                "line 1: the card number fails the Luhn check",
            ),
            (
                format!(
                    r#"[{{"pan": "{card}", "balance": 1}}, {{"pan": "{card}", "balance": 2}}]"#
                ),
                "entry 2: the same card as entry 1",
            ),
            (
                format!("pan,balance\n{card},100,978\n"),
                "line 2: 3 columns, expected two: pan,balance",
            ),
            ("# nothing yet\n".to_string(), "no accounts in the file"),
            ("[]".to_string(), "no accounts in the file"),
            (
                format!(r#"{{"pan": "{card}", "balance": 1}}"#),
                "a JSON object: expected an array",
            ),
        ] {
            let e = parse_accounts(&text).unwrap_err();
            assert!(e.starts_with(error), "{e}");
            assert!(!e.contains(card) && !e.contains(&bad_luhn), "{e}");
        }
    }

    #[test]
    fn accounts_load_from_json_and_from_csv_with_a_header() {
        let dir = tempfile::tempdir().unwrap();
        let json = dir.path().join("a.json");
        std::fs::write(
            &json,
            format!(r#"[{{"pan": "{}", "balance": 5000}}]"#, pan_text()),
        )
        .unwrap();
        let csv = dir.path().join("a.csv");
        std::fs::write(
            &csv,
            format!("pan,balance\n# test card\n{}, 5000\n", pan_text()),
        )
        .unwrap();
        for p in [json, csv] {
            let a = load_accounts(&p).unwrap();
            assert_eq!(a.len(), 1);
            assert_eq!(a[0].0.as_bytes(), pan_text().as_bytes());
            assert_eq!(a[0].1, 5000);
        }
        let bad = dir.path().join("b.csv");
        std::fs::write(&bad, format!("{},lots\n", pan_text())).unwrap();
        let e = load_accounts(&bad).unwrap_err().to_string();
        assert!(e.contains("line 1") && !e.contains(pan_text()), "{e}");
    }
}
