//! The API's bodies: what a caller sends and gets back, and the checks that turn a request
//! into a [`CardSpec`]. Pure functions of the body and the clock, tested here as tables.
//!
//! Reading is strict (unknown keys are a 400, so a typo such as `max_use` is never silently
//! dropped); values are then checked one by one, and each refusal (a 422) starts with the
//! field's name. Amounts are read as signed numbers so that `-5` is a clear "must be
//! positive" rather than a type error. Answers show the real card only masked.

use std::fmt;
use std::num::{NonZeroU32, NonZeroU64};

use serde::{Deserialize, Serialize};
use serde_json::Number;

use super::error::ApiError;
use crate::cards::card::{format_rfc3339, parse_rfc3339};
use crate::cards::{
    AcceptorId, CardSpec, CardView, Controls, Expiry, MerchantLock, RecentTx, UnixSeconds,
};
use crate::pan::{Masked, Pan};

/// A code given as a JSON string (`"978"`) or number (`978`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(
    untagged,
    expecting = "expected a code, as digits in a string or as a number"
)]
pub enum Code {
    /// As text: exactly the digits, leading zeros kept.
    Text(String),
    /// As a number (any JSON number: one with a fraction or out of range is a code no
    /// field takes, 422, not a malformed request).
    Number(Number),
}

/// `merchant_lock` as sent: `"none"`, `"first_use"` or `{"acceptor_id": "..."}`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(
    untagged,
    expecting = "expected `none`, `first_use` or an object with only `acceptor_id`, a string"
)]
pub enum LockBody {
    /// `"none"` or `"first_use"`.
    Name(String),
    /// A fixed merchant (DE 42).
    Acceptor(AcceptorLock),
}

/// `{"acceptor_id": "..."}`, nothing else: a key misspelt or added is refused (400), as at
/// the top level, rather than ignored.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, remote = "Self")]
pub struct AcceptorLock {
    /// The card acceptor ID, 1 to 15 printable characters.
    pub acceptor_id: String,
}

/// `POST /v1/cards`.
#[derive(Clone, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "an object of the card's fields",
    remote = "Self"
)]
pub struct CreateCard {
    /// The real card number (Luhn-valid).
    pub pan: String,
    /// The real card's expiry, YYMM.
    pub pan_expiry: String,
    /// ISO 4217 numeric currency of the limits.
    pub currency: Code,
    /// Cumulative cap, minor units. The integers of the request are read as any JSON
    /// number, so that one out of range or with a fraction is a value the field cannot
    /// take (422), as a negative one is, not a malformed request (400).
    pub amount_limit: Number,
    /// Largest single purchase, minor units.
    #[serde(default)]
    pub per_transaction_limit: Option<Number>,
    /// Approved purchases allowed (1: single use).
    #[serde(default)]
    pub max_uses: Option<Number>,
    /// End of validity, RFC 3339.
    #[serde(default)]
    pub valid_until: Option<String>,
    /// Validity from now, in seconds (instead of `valid_until`).
    #[serde(default)]
    pub valid_for_seconds: Option<Number>,
    /// Where the card may be used; default `"none"`.
    #[serde(default)]
    pub merchant_lock: Option<LockBody>,
    /// MCCs allowed (empty or null: all).
    #[serde(default, deserialize_with = "null_as_empty")]
    pub mcc_allow: Vec<Code>,
    /// MCCs refused (empty or null: none).
    #[serde(default, deserialize_with = "null_as_empty")]
    pub mcc_block: Vec<Code>,
}

impl CreateCard {
    /// Checks every value and builds the spec; the error names the first bad field.
    pub fn into_spec(self, now: UnixSeconds) -> Result<CardSpec, ApiError> {
        let pan = Pan::from_digits_checked(self.pan.as_bytes())
            .map_err(|e| ApiError::invalid(format!("pan: {e}")))?;
        let pan_expiry = Expiry::parse(self.pan_expiry.as_bytes()).ok_or_else(|| {
            ApiError::invalid("pan_expiry: must be the real card's expiry as YYMM, e.g. \"2912\"")
        })?;
        if pan_expiry.as_str() < Expiry::of_time(now).as_str() {
            return Err(ApiError::invalid(format!(
                "pan_expiry: the real card expired at the end of {} (YYMM)",
                pan_expiry.as_str()
            )));
        }
        let currency = code(&self.currency, 3).ok_or_else(|| {
            ApiError::invalid(
                "currency: must be an ISO 4217 numeric code of 3 digits, e.g. \"978\"",
            )
        })?;
        if !super::iso4217::is_assigned(currency) {
            return Err(ApiError::invalid(format!(
                "currency: {currency:03} is no ISO 4217 currency"
            )));
        }
        let amount_limit = positive("amount_limit", &self.amount_limit)?;
        let per_transaction_limit = match self.per_transaction_limit {
            None => None,
            Some(v) => {
                let v = positive("per_transaction_limit", &v)?;
                if v > amount_limit {
                    return Err(ApiError::invalid(format!(
                        "per_transaction_limit: {v} is over amount_limit {amount_limit}"
                    )));
                }
                NonZeroU64::new(v)
            }
        };
        let max_uses = match self.max_uses {
            None => None,
            Some(v) => Some(
                v.as_u64()
                    .and_then(|v| u32::try_from(v).ok())
                    .and_then(NonZeroU32::new)
                    .ok_or_else(|| {
                        ApiError::invalid(format!("max_uses: must be from 1 to {}", u32::MAX))
                    })?,
            ),
        };
        let valid_until = match (self.valid_until, self.valid_for_seconds) {
            (Some(_), Some(_)) => {
                return Err(ApiError::invalid(
                    "valid_until: give valid_until or valid_for_seconds, not both",
                ));
            }
            (Some(text), None) => {
                let t = parse_rfc3339(&text).ok_or_else(|| {
                    ApiError::invalid(
                        "valid_until: must be an RFC 3339 time, e.g. \"2026-12-31T23:59:59Z\"",
                    )
                })?;
                if t <= now {
                    return Err(ApiError::invalid("valid_until: is in the past"));
                }
                t
            }
            (None, Some(secs)) => {
                let secs = positive("valid_for_seconds", &secs)?;
                // `now` is the second the card is made in, cut to its start: counted from
                // there, a card made late in a second lived less than it asked (a second
                // made 0.77 s before its end, 0.23 s). From the next second, it lives at
                // least what it asked, and at most a second more.
                let t = now.saturating_add(secs).saturating_add(1);
                if t > end_of_month(pan_expiry) {
                    return Err(ApiError::invalid(
                        "valid_for_seconds: ends after the real card's expiry (pan_expiry)",
                    ));
                }
                t
            }
            (None, None) => end_of_month(pan_expiry),
        };
        let merchant_lock = match self.merchant_lock {
            None => MerchantLock::None,
            Some(LockBody::Name(n)) if n == "none" => MerchantLock::None,
            Some(LockBody::Name(n)) if n == "first_use" => MerchantLock::FirstUse,
            Some(LockBody::Acceptor(AcceptorLock { acceptor_id })) => {
                let id = acceptor_id.trim_end();
                if id.is_empty() {
                    return Err(ApiError::invalid(
                        "merchant_lock.acceptor_id: must not be empty",
                    ));
                }
                if id.starts_with(' ') {
                    // DE 42 is left-aligned, padded on the right: such a lock could
                    // never match, and the card would decline everywhere.
                    return Err(ApiError::invalid(
                        "merchant_lock.acceptor_id: must not begin with a space (DE 42 is left-aligned)",
                    ));
                }
                MerchantLock::Acceptor(AcceptorId::new(id.as_bytes()).ok_or_else(|| {
                    ApiError::invalid(
                        "merchant_lock.acceptor_id: must be 1 to 15 printable ASCII characters",
                    )
                })?)
            }
            Some(LockBody::Name(_)) => {
                return Err(ApiError::invalid(
                    "merchant_lock: must be \"none\", \"first_use\" or {\"acceptor_id\": \"...\"}",
                ));
            }
        };
        let mcc_allow = mccs("mcc_allow", &self.mcc_allow)?;
        let mcc_block = mccs("mcc_block", &self.mcc_block)?;
        if let Some((i, both)) = mcc_block
            .iter()
            .enumerate()
            .find(|(_, m)| mcc_allow.contains(m))
        {
            // Blocked wins, so the code would be allowed in name only: a mistake in the
            // request, not a control anyone means.
            return Err(ApiError::invalid(format!(
                "mcc_block[{i}]: {both:04} is in mcc_allow too"
            )));
        }
        Ok(CardSpec {
            pan,
            pan_expiry,
            controls: Controls {
                currency,
                amount_limit,
                per_transaction_limit,
                max_uses,
                valid_until,
                merchant_lock,
                mcc_allow,
                mcc_block,
            },
        })
    }
}

/// A body read only from a JSON object. serde's derived structs also take an array of
/// their fields in order (`["4970…", "2912", "978", 10000]`), which would give a client
/// that sends its values in another order a card with other controls than it meant.
/// The derive is kept, as `remote = "Self"`, for the reading of the object's keys.
trait ObjectOnly<'de>: Sized {
    /// What the refusal of anything else says was expected.
    const EXPECTING: &'static str;
    /// The derived reading, given the object's entries.
    fn from_entries<A: serde::de::MapAccess<'de>>(entries: A) -> Result<Self, A::Error>;
}

/// Reads a `T` if the JSON value is an object, else refuses it as `T::EXPECTING`.
fn object_only<'de, T: ObjectOnly<'de>, D: serde::Deserializer<'de>>(d: D) -> Result<T, D::Error> {
    struct Entries<T>(std::marker::PhantomData<T>);
    impl<'de, T: ObjectOnly<'de>> serde::de::Visitor<'de> for Entries<T> {
        type Value = T;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str(T::EXPECTING)
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(self, entries: A) -> Result<T, A::Error> {
            T::from_entries(entries)
        }
    }
    d.deserialize_map(Entries(std::marker::PhantomData))
}

impl<'de> ObjectOnly<'de> for CreateCard {
    const EXPECTING: &'static str = "an object of the card's fields";
    fn from_entries<A: serde::de::MapAccess<'de>>(entries: A) -> Result<Self, A::Error> {
        CreateCard::deserialize(serde::de::value::MapAccessDeserializer::new(entries))
    }
}

impl<'de> Deserialize<'de> for CreateCard {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        object_only(d)
    }
}

impl<'de> ObjectOnly<'de> for AcceptorLock {
    const EXPECTING: &'static str = "an object with only `acceptor_id`";
    fn from_entries<A: serde::de::MapAccess<'de>>(entries: A) -> Result<Self, A::Error> {
        AcceptorLock::deserialize(serde::de::value::MapAccessDeserializer::new(entries))
    }
}

impl<'de> Deserialize<'de> for AcceptorLock {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        object_only(d)
    }
}

impl Serialize for AcceptorLock {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        // The derived writing (`remote = "Self"` makes it an inherent function).
        AcceptorLock::serialize(self, s)
    }
}

/// The most MCCs one list may hold.
pub const MAX_MCCS: usize = 1000;

/// `null` for a list, as for every other optional field: not set. A client that writes
/// every field, null where it has no value, is not refused for these two alone.
fn null_as_empty<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<Code>, D::Error> {
    Ok(Option::<Vec<Code>>::deserialize(d)?.unwrap_or_default())
}

/// A whole number from 1 to `i64::MAX`.
fn positive(field: &str, v: &Number) -> Result<u64, ApiError> {
    v.as_i64()
        .and_then(|v| u64::try_from(v).ok())
        .filter(|&v| v > 0)
        .ok_or_else(|| {
            ApiError::invalid(format!(
                "{field}: must be a whole number written in digits alone (no fraction, no exponent), at least 1 and below 2^63"
            ))
        })
}

/// A numeric code of exactly `digits` digits (as text) or in range (as a number).
fn code(c: &Code, digits: u32) -> Option<u16> {
    match c {
        Code::Text(t) if t.len() == digits as usize && t.bytes().all(|b| b.is_ascii_digit()) => {
            t.parse().ok()
        }
        Code::Number(n) => n
            .as_u64()
            .filter(|n| *n < 10u64.pow(digits))
            .and_then(|n| u16::try_from(n).ok()),
        _ => None,
    }
}

fn mccs(field: &str, list: &[Code]) -> Result<Vec<u16>, ApiError> {
    if list.len() > MAX_MCCS {
        return Err(ApiError::invalid(format!(
            "{field}: at most {MAX_MCCS} codes"
        )));
    }
    list.iter()
        .enumerate()
        .map(|(i, c)| {
            code(c, 4).ok_or_else(|| {
                ApiError::invalid(format!("{field}[{i}]: an MCC is 4 digits, e.g. \"5411\""))
            })
        })
        .collect()
}

/// The last second of the month YYMM (a card is valid through its expiry month).
fn end_of_month(e: Expiry) -> UnixSeconds {
    let yy = u32::from(e.0[0] - b'0') * 10 + u32::from(e.0[1] - b'0');
    let mm = u32::from(e.0[2] - b'0') * 10 + u32::from(e.0[3] - b'0');
    let (y, m) = if mm == 12 { (yy + 1, 1) } else { (yy, mm + 1) };
    let next = format!("{:04}-{m:02}-01T00:00:00Z", 2000 + y);
    parse_rfc3339(&next).map_or(UnixSeconds::MAX, |t| t - 1)
}

/// `merchant_lock` as answered.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum LockOut {
    /// `"none"` or `"first_use"`.
    Name(&'static str),
    /// A fixed merchant.
    Acceptor {
        /// The card acceptor ID.
        acceptor_id: String,
    },
}

/// An MCC, answered as its 4 digits: written straight into the JSON, so that a page of
/// cards with long MCC lists does not make a string of each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mcc(pub u16);

impl Serialize for Mcc {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&format_args!("{:04}", self.0))
    }
}

/// A card as answered by every card endpoint: status, counters and the controls. The vPAN
/// in full (the caller is authorized and needs it), the real PAN only masked.
#[derive(Clone, Serialize)]
pub struct CardBody {
    /// The virtual card number.
    pub vpan: String,
    /// The virtual expiry, YYMM.
    pub expiry: String,
    /// `active`, `paused` or `closed`.
    pub status: &'static str,
    /// The real card, first 6 and last 4 digits.
    pub pan_masked: String,
    /// ISO 4217 numeric, 3 digits.
    pub currency: String,
    /// Cumulative cap, minor units.
    pub amount_limit: u64,
    /// Per-purchase cap, minor units.
    pub per_transaction_limit: Option<u64>,
    /// Uses allowed.
    pub max_uses: Option<u32>,
    /// End of validity, RFC 3339 UTC.
    pub valid_until: String,
    /// Where the card may be used.
    pub merchant_lock: LockOut,
    /// The merchant (DE 42) a `first_use` lock bound the card to, once it has.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub merchant_bound: Option<String>,
    /// MCCs allowed (empty: all), 4 digits each.
    pub mcc_allow: Vec<Mcc>,
    /// MCCs refused.
    pub mcc_block: Vec<Mcc>,
    /// Spent so far, minor units.
    pub spent: u64,
    /// Held by approvals waiting for the issuer.
    pub held: u64,
    /// Still available under the cap: 0 once the card is closed or past `valid_until`.
    pub available: u64,
    /// Uses counted.
    pub uses: u32,
    /// When issued, RFC 3339 UTC.
    pub created_at: String,
}

impl CardBody {
    /// The card as it stands at `now`: past its `valid_until` it approves nothing, so
    /// nothing is available, though its status stays `active` (the contract's statuses
    /// have no `expired`).
    pub fn at(v: &CardView, now: UnixSeconds) -> CardBody {
        let c = &v.controls;
        let available = if now >= c.valid_until { 0 } else { v.available };
        CardBody {
            vpan: v.vpan.expose().to_string(),
            expiry: v.expiry.as_str().to_string(),
            status: v.status.as_str(),
            pan_masked: v.real_pan_masked.clone(),
            currency: format!("{:03}", c.currency),
            amount_limit: c.amount_limit,
            per_transaction_limit: c.per_transaction_limit.map(NonZeroU64::get),
            max_uses: c.max_uses.map(NonZeroU32::get),
            valid_until: format_rfc3339(c.valid_until),
            merchant_lock: match c.merchant_lock {
                MerchantLock::None => LockOut::Name("none"),
                MerchantLock::FirstUse => LockOut::Name("first_use"),
                MerchantLock::Acceptor(id) => LockOut::Acceptor {
                    acceptor_id: id.as_str().to_string(),
                },
            },
            merchant_bound: v.merchant_bound.map(|id| id.as_str().to_string()),
            mcc_allow: c.mcc_allow.iter().copied().map(Mcc).collect(),
            mcc_block: c.mcc_block.iter().copied().map(Mcc).collect(),
            spent: v.spent,
            held: v.held,
            available,
            uses: v.uses,
            created_at: format_rfc3339(v.created_at),
        }
    }
}

/// One decision on a card, as `GET /v1/cards/{vpan}/transactions` shows it.
#[derive(Clone, Debug, Serialize)]
pub struct TransactionBody {
    /// When it was decided, RFC 3339 UTC.
    pub time: String,
    /// The request's MTI.
    pub mti: String,
    /// Amount, minor units.
    pub amount: u64,
    /// DE 39 of the answer.
    pub response_code: String,
    /// `switch` or `issuer`.
    pub decided_by: &'static str,
    /// DE 42, when the request had one.
    pub merchant: Option<String>,
    /// A credit to the account (DE 3 from 20): a refund, not a purchase.
    pub refund: bool,
}

impl From<&RecentTx> for TransactionBody {
    fn from(t: &RecentTx) -> TransactionBody {
        TransactionBody {
            time: format_rfc3339(t.at),
            mti: String::from_utf8_lossy(&t.mti).into_owned(),
            amount: t.amount,
            response_code: t.code.as_str().to_string(),
            decided_by: t.decided_by.as_str(),
            merchant: t.merchant.map(|m| m.as_str().to_string()),
            refund: t.refund,
        }
    }
}

/// `GET /v1/cards/{vpan}/transactions`.
#[derive(Clone, Debug, Serialize)]
pub struct TransactionList {
    /// Newest first.
    pub transactions: Vec<TransactionBody>,
}

/// `GET /v1/cards` query: `limit` (1 to [`MAX_PAGE`], default [`DEFAULT_PAGE`]) and
/// `after` (the last vPAN of the previous page).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Page size.
    pub limit: Option<String>,
    /// Cards after this vPAN.
    pub after: Option<String>,
}

/// `POST /v1/cards/search`: the real card whose vPANs are listed. In the body, not the
/// query, so that the card number stays out of request lines that proxies and access
/// logs keep. One field, so that an array read by position cannot be misread.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields, expecting = "an object with only `pan`")]
pub struct SearchCards {
    /// The real card number.
    pub pan: String,
}

/// Masked, as [`CreateCard`]'s.
impl fmt::Debug for SearchCards {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SearchCards")
            .field("pan", &crate::pan::Masked(self.pan.as_bytes()))
            .finish()
    }
}

/// Cards per page by default.
pub const DEFAULT_PAGE: usize = 50;
/// Cards per page at most.
pub const MAX_PAGE: usize = 1000;

/// `GET /v1/cards`.
#[derive(Clone, Debug, Serialize)]
pub struct CardList {
    /// Cards in vPAN order.
    pub cards: Vec<CardBody>,
    /// Pass as `after` for the next page; `null` on the last page.
    pub next_after: Option<String>,
}

/// Masked: the real card number in full must never reach a log line, even through `{:?}`.
impl fmt::Debug for CreateCard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CreateCard")
            .field("pan", &format_args!("{}", Masked(self.pan.as_bytes())))
            .finish_non_exhaustive()
    }
}

/// Masked: the vPAN goes in full to the caller, never to a log line.
impl fmt::Debug for CardBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CardBody")
            .field("vpan", &format_args!("{}", Masked(self.vpan.as_bytes())))
            .field("status", &self.status)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_mcc_is_answered_as_its_four_digits() {
        let json = serde_json::to_string(&[Mcc(742), Mcc(5411), Mcc(0)]).unwrap();
        assert_eq!(json, r#"["0742","5411","0000"]"#);
    }

    /// 2026-11-26T15:29:42Z.
    const NOW: u64 = 1_795_706_982;

    #[test]
    fn card_numbers_are_masked_in_debug_output() {
        let create: CreateCard = serde_json::from_value(body(serde_json::json!({}))).unwrap();
        let shown = format!("{create:?}");
        assert!(!shown.contains(&create.pan), "{shown}");
        assert!(shown.contains(&create.pan[..6]), "{shown}");
    }

    fn body(extra: serde_json::Value) -> serde_json::Value {
        let mut b = serde_json::json!({
            "pan": crate::pan::test_pan("497010"),
            "pan_expiry": "2912",
            "currency": "978",
            "amount_limit": 10000
        });
        if let (Some(b), Some(extra)) = (b.as_object_mut(), extra.as_object()) {
            for (k, v) in extra {
                b.insert(k.clone(), v.clone());
            }
        }
        b
    }

    fn check(extra: serde_json::Value) -> Result<CardSpec, ApiError> {
        serde_json::from_value::<CreateCard>(body(extra))
            .unwrap()
            .into_spec(NOW)
    }

    #[test]
    fn a_minimal_request_gives_a_card_valid_until_the_real_card_expires() {
        let spec = check(serde_json::json!({})).unwrap();
        assert_eq!(spec.controls.currency, 978);
        assert_eq!(spec.controls.amount_limit, 10_000);
        assert_eq!(
            format_rfc3339(spec.controls.valid_until),
            "2029-12-31T23:59:59Z"
        );
        assert_eq!(spec.controls.merchant_lock, MerchantLock::None);
    }

    #[test]
    fn every_control_is_read() {
        let spec = check(serde_json::json!({
            "currency": 36,
            "per_transaction_limit": 2500,
            "max_uses": 3,
            "valid_for_seconds": 3600,
            "merchant_lock": {"acceptor_id": "SHOP0001"},
            "mcc_allow": ["5411", 742],
            "mcc_block": ["7995"]
        }))
        .unwrap();
        let c = spec.controls;
        assert_eq!(c.currency, 36);
        assert_eq!(c.per_transaction_limit.map(NonZeroU64::get), Some(2500));
        assert_eq!(c.max_uses.map(NonZeroU32::get), Some(3));
        // At least the hour asked, whenever in its second the card was made.
        assert_eq!(c.valid_until, NOW + 3600 + 1);
        assert_eq!(
            c.merchant_lock,
            MerchantLock::Acceptor(AcceptorId::new(b"SHOP0001").unwrap())
        );
        assert_eq!(c.mcc_allow, vec![5411, 742]);
        assert_eq!(c.mcc_block, vec![7995]);
    }

    #[test]
    fn a_merchant_lock_object_with_a_key_besides_acceptor_id_is_malformed() {
        let sent = body(serde_json::json!({"merchant_lock": {"acceptor_id": "SHOP1", "foo": 1}}));
        assert!(serde_json::from_value::<CreateCard>(sent).is_err());
        let err = check(serde_json::json!({"max_uses": 4_294_967_296_i64})).unwrap_err();
        assert_eq!(err.message, "max_uses: must be from 1 to 4294967295");
        // A code of the right shape that names no currency: EUR's digits swapped.
        let err = check(serde_json::json!({"currency": "987"})).unwrap_err();
        assert_eq!(err.message, "currency: 987 is no ISO 4217 currency");
        let err = check(serde_json::json!({"currency": 0})).unwrap_err();
        assert_eq!(err.message, "currency: 000 is no ISO 4217 currency");
    }

    #[test]
    fn a_card_or_a_merchant_lock_given_as_an_array_of_its_values_is_malformed() {
        let pan = crate::pan::test_pan("497010");
        let in_order = serde_json::json!([pan, "2912", "978", 10000]);
        let said = serde_json::from_slice::<CreateCard>(in_order.to_string().as_bytes())
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(said.contains("an object of the card's fields"), "{said}");
        let lock = body(serde_json::json!({"merchant_lock": ["SHOP1"]}));
        assert!(serde_json::from_slice::<CreateCard>(lock.to_string().as_bytes()).is_err());
        let lock = body(serde_json::json!({"merchant_lock": {"acceptor_id": "SHOP1"}}));
        let spec = serde_json::from_slice::<CreateCard>(lock.to_string().as_bytes())
            .unwrap()
            .into_spec(NOW)
            .unwrap();
        assert!(matches!(
            spec.controls.merchant_lock,
            MerchantLock::Acceptor(_)
        ));
        let twice = r#"{"merchant_lock": {"acceptor_id": "A", "acceptor_id": "B"}}"#;
        assert!(serde_json::from_str::<CreateCard>(twice).is_err());
    }

    #[test]
    fn null_mcc_lists_are_not_set_as_null_is_for_every_optional_field() {
        let spec = check(serde_json::json!({
            "mcc_allow": null, "mcc_block": null, "max_uses": null, "merchant_lock": null
        }))
        .unwrap();
        assert!(spec.controls.mcc_allow.is_empty() && spec.controls.mcc_block.is_empty());
    }

    #[test]
    fn a_malformed_lock_code_or_body_is_told_in_the_apis_words_not_serdes() {
        let said = |sent: serde_json::Value| {
            serde_json::from_value::<CreateCard>(sent)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        };
        let lock = said(body(
            serde_json::json!({"merchant_lock": {"acceptor_id": 5}}),
        ));
        assert!(lock.contains("`first_use`"), "{lock}");
        let currency = said(body(serde_json::json!({"currency": true})));
        assert!(currency.contains("a code, as digits"), "{currency}");
        // Said as what was expected, as serde says it of every other type.
        for said in [&lock, &currency] {
            assert!(said.starts_with("expected "), "{said}");
        }
        let listed = said(serde_json::json!([]));
        assert!(
            listed.contains("an object of the card's fields"),
            "{listed}"
        );
        for said in [lock, currency, listed] {
            assert!(!said.contains("enum") && !said.contains("struct"), "{said}");
        }
        // Counts that are not whole, or too large, are told as such, not as "an amount".
        for (field, value) in [
            ("amount_limit", serde_json::json!(50.5)),
            ("amount_limit", serde_json::json!(1e20)),
            ("valid_for_seconds", serde_json::json!(1.5)),
        ] {
            let err = check(serde_json::json!({ field: value })).unwrap_err();
            let want = format!(
                "{field}: must be a whole number written in digits alone (no fraction, no exponent), at least 1 and below 2^63"
            );
            assert_eq!(err.message, want);
        }
    }

    #[test]
    fn each_invalid_value_is_refused_naming_its_field() {
        let bad_luhn = crate::pan::bad_luhn(&crate::pan::test_pan("497010"));
        let cases = [
            (serde_json::json!({"pan": bad_luhn}), "pan"),
            (serde_json::json!({"pan": "49701012"}), "pan"),
            (serde_json::json!({"pan_expiry": "2913"}), "pan_expiry"),
            (serde_json::json!({"pan_expiry": "12/29"}), "pan_expiry"),
            (serde_json::json!({"pan_expiry": "2001"}), "pan_expiry"),
            (serde_json::json!({"currency": "97"}), "currency"),
            (serde_json::json!({"currency": "EUR"}), "currency"),
            (serde_json::json!({"currency": 1000}), "currency"),
            (serde_json::json!({"currency": 978.5}), "currency"),
            (
                serde_json::json!({"currency": 99_999_999_999_999_999_999_f64}),
                "currency",
            ),
            (serde_json::json!({"mcc_allow": [5411.5]}), "mcc_allow[0]"),
            (serde_json::json!({"currency": "987"}), "currency"),
            (serde_json::json!({"currency": "000"}), "currency"),
            (serde_json::json!({"amount_limit": 0}), "amount_limit"),
            (serde_json::json!({"amount_limit": -5}), "amount_limit"),
            (
                serde_json::json!({"per_transaction_limit": 0}),
                "per_transaction_limit",
            ),
            (
                serde_json::json!({"per_transaction_limit": 10001}),
                "per_transaction_limit",
            ),
            (serde_json::json!({"max_uses": 0}), "max_uses"),
            (serde_json::json!({"max_uses": 1.5}), "max_uses"),
            (
                serde_json::json!({"amount_limit": 9_223_372_036_854_775_808_u64}),
                "amount_limit",
            ),
            (serde_json::json!({"amount_limit": 100.5}), "amount_limit"),
            (
                serde_json::json!({"per_transaction_limit": -1}),
                "per_transaction_limit",
            ),
            (
                serde_json::json!({"valid_for_seconds": 100_000_000_000_u64}),
                "valid_for_seconds",
            ),
            (
                serde_json::json!({"max_uses": 4_294_967_296_i64}),
                "max_uses",
            ),
            (
                serde_json::json!({"valid_until": "2020-01-01T00:00:00Z"}),
                "valid_until",
            ),
            (
                serde_json::json!({"valid_until": "tomorrow"}),
                "valid_until",
            ),
            (
                serde_json::json!({"valid_until": "2030-01-01T00:00:00Z", "valid_for_seconds": 60}),
                "valid_until",
            ),
            (
                serde_json::json!({"valid_for_seconds": 0}),
                "valid_for_seconds",
            ),
            (
                serde_json::json!({"merchant_lock": "sometimes"}),
                "merchant_lock",
            ),
            (
                serde_json::json!({"merchant_lock": {"acceptor_id": "A MERCHANT ID TOO LONG"}}),
                "merchant_lock.acceptor_id",
            ),
            (serde_json::json!({"mcc_allow": ["541"]}), "mcc_allow[0]"),
            (
                serde_json::json!({"mcc_allow": ["5411", "5812"], "mcc_block": ["7995", 5812]}),
                "mcc_block[1]",
            ),
            (
                serde_json::json!({"merchant_lock": {"acceptor_id": " SHOP1"}}),
                "merchant_lock.acceptor_id",
            ),
            (
                serde_json::json!({"mcc_block": ["5411", "54111"]}),
                "mcc_block[1]",
            ),
        ];
        for (extra, field) in cases {
            let err = check(extra.clone()).unwrap_err();
            assert_eq!(err.code, "invalid_value", "{extra}");
            assert!(
                err.message.starts_with(&format!("{field}:")),
                "{extra} gave {:?}",
                err.message
            );
            assert!(!err.message.contains(&bad_luhn));
        }
    }

    #[test]
    fn an_unknown_key_is_not_read() {
        let err = serde_json::from_value::<CreateCard>(body(serde_json::json!({"max_use": 1})))
            .unwrap_err()
            .to_string();
        assert!(err.contains("max_use"), "{err}");
    }

    #[test]
    fn the_end_of_a_month_is_its_last_second() {
        assert_eq!(
            format_rfc3339(end_of_month(Expiry(*b"2602"))),
            "2026-02-28T23:59:59Z"
        );
        assert_eq!(
            format_rfc3339(end_of_month(Expiry(*b"2812"))),
            "2028-12-31T23:59:59Z"
        );
    }
}
