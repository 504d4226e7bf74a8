//! The contract's error shape, `{"error": {"code": "...", "message": "..."}}`, for every
//! answer that is not a success: validation, auth, unknown cards, conflicts, overload, and
//! axum's own rejections (malformed JSON, a body over the limit), so a client never has to
//! parse two kinds of error.
//!
//! Messages name the field at fault and never carry a card number: any run of 12 or more
//! digits in a message (serde echoes the value it could not read) is masked on the way out.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// An API error: the HTTP status, a stable machine-readable code, a message for people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// Stable code clients can branch on (`invalid_value`, `not_found`, ...).
    pub code: &'static str,
    /// What went wrong and what to fix; names the field for validation errors.
    pub message: String,
    /// A 503 that may pass on its own (overload, a stalled disk): told to clients as
    /// `Retry-After: 1`. One that only an operator can mend has none, so that clients do
    /// not loop on it.
    retry_shortly: bool,
}

impl ApiError {
    /// An error with this status, code and message.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: mask_card_numbers(&message.into()),
            retry_shortly: status == StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// 400: the request could not be read (malformed JSON, an unknown key, a wrong type).
    pub fn malformed(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "malformed", message)
    }

    /// 401: the bearer token is missing or wrong.
    pub fn unauthorized() -> ApiError {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a valid bearer token is required: Authorization: Bearer <api token>",
        )
    }

    /// 404: no card with this number.
    pub fn card_not_found() -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", "no card with this vPAN")
    }

    /// 409: the change is not possible in the card's state.
    pub fn conflict(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::CONFLICT, "conflict", message)
    }

    /// 422: a value is invalid; `message` starts with the field's name.
    pub fn invalid(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_value", message)
    }

    /// 503: vpan cannot do it now (the store failed, too many requests at once).
    pub fn unavailable(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, code, message)
    }

    /// 503 that no retry mends until an operator acts (every number of a range taken).
    pub fn unavailable_until_mended(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            retry_shortly: false,
            ..ApiError::unavailable(code, message)
        }
    }
}

/// The JSON body of an error.
#[derive(Serialize)]
struct Body<'a> {
    error: Inner<'a>,
}

#[derive(Serialize)]
struct Inner<'a> {
    code: &'a str,
    message: &'a str,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Body {
            error: Inner {
                code: self.code,
                message: &self.message,
            },
        };
        let mut response = (self.status, axum::Json(body)).into_response();
        if self.retry_shortly {
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from_static("1"),
            );
        }
        response
    }
}

/// Masks every run of 12 or more digits; one function for the API, the CLI and the logs.
pub use crate::pan::mask_card_numbers;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn card_numbers_in_a_message_are_masked_and_short_numbers_kept() {
        let card = crate::pan::test_pan("497010");
        assert_eq!(
            mask_card_numbers(&format!(
                "invalid type: integer `{card}`, expected a string"
            )),
            format!(
                "invalid type: integer `497010******{}`, expected a string",
                &card[12..]
            )
        );
        assert_eq!(
            mask_card_numbers("line 1 column 42: 978 €"),
            "line 1 column 42: 978 €"
        );
    }

    #[test]
    fn an_error_carries_its_status_code_and_message() {
        let e = ApiError::invalid("pan: fails the Luhn check");
        assert_eq!(e.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(e.code, "invalid_value");
        assert!(e.message.starts_with("pan"));
    }
}
