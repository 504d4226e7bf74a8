//! Any bytes as the body of `POST /v1/cards`: read the way the API reads it (axum's `Json`
//! extractor, then `CreateCard::into_spec`), it must never panic; a refusal must be a 400
//! or a 422 whose message holds no card number; an accepted body must give a card spec that
//! keeps the promises the validation makes.
#![no_main]

use axum::Json;
use axum::http::StatusCode;
use libfuzzer_sys::fuzz_target;
use vpan::api::error::ApiError;
use vpan::api::model::CreateCard;

/// A fixed clock (2026-06-01T00:00:00Z), so a crash replays the same way.
const NOW: u64 = 1_780_272_000;

/// True when `text` holds a run of 12 or more digits: what the API masks in messages.
fn has_card_number(text: &str) -> bool {
    let mut run = 0;
    for b in text.bytes() {
        run = if b.is_ascii_digit() { run + 1 } else { 0 };
        if run >= 12 {
            return true;
        }
    }
    false
}

fuzz_target!(|data: &[u8]| {
    let error = match Json::<CreateCard>::from_bytes(data) {
        // As `routes::json_rejection` does for a body that does not read.
        Err(rejection) => ApiError::malformed(rejection.body_text()),
        Ok(Json(request)) => match request.into_spec(NOW) {
            Ok(spec) => {
                let c = &spec.controls;
                assert!(c.amount_limit > 0);
                assert!(
                    c.per_transaction_limit
                        .is_none_or(|p| p.get() <= c.amount_limit)
                );
                assert!(c.valid_until > NOW);
                assert!(c.currency > 0 && c.currency <= 999);
                assert!(c.mcc_allow.iter().chain(&c.mcc_block).all(|m| *m <= 9999));
                // The PAN is Luhn-valid, and it never prints in full.
                let shown = format!("{:?} {}", spec.pan, spec.pan);
                assert!(!shown.contains(std::str::from_utf8(spec.pan.as_bytes()).unwrap_or("")));
                return;
            }
            Err(e) => {
                assert_eq!(e.status, StatusCode::UNPROCESSABLE_ENTITY);
                e
            }
        },
    };
    assert!(
        matches!(
            error.status,
            StatusCode::BAD_REQUEST | StatusCode::UNPROCESSABLE_ENTITY
        ),
        "{}",
        error.status
    );
    assert!(
        !has_card_number(&error.message),
        "a card number in an error message"
    );
});
