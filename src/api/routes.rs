//! The endpoints: one small handler per call of the contract, over the [`Cards`](crate::cards::Cards) facade.
//!
//! The router is built from one table ([`table`]), which also says which calls need the
//! token; the OpenAPI document is checked against that same table by a test, so the two
//! cannot drift apart. Every handler answers either its body or an [`ApiError`]: nothing
//! here panics on input, and the lock on a card is never held across an `.await` (the
//! facade returns owned views).

use axum::Json;
use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, RawQuery, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get, post};
use serde::de::DeserializeOwned;

use super::error::ApiError;
use super::model::{
    CardBody, CardList, CreateCard, DEFAULT_PAGE, ListQuery, MAX_PAGE, SearchCards,
    TransactionBody, TransactionList,
};
use super::{ApiState, Health};
use crate::cards::card::unix_now as now;
use crate::cards::requests::{self, Earlier, RequestKey};
use crate::cards::vpan::GenerateError;
use crate::cards::{CardError, CardKey, CardView, IssueError, StatusChange};
use crate::pan::Pan;
use crate::store::StoreError;

/// The OpenAPI 3 document of this API, served at `GET /v1/openapi.json`.
pub const OPENAPI: &str = include_str!("openapi.json");

/// The request header that makes `POST /v1/cards` safe to send again.
const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
/// The answer's header saying the card was issued by an earlier request with the key.
const IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");

/// One call of the API.
pub struct Route {
    /// The HTTP method.
    pub method: Method,
    /// The path, with `{vpan}` for the card number.
    pub path: &'static str,
    /// Whether the bearer token is required.
    pub auth: bool,
    /// The handler.
    pub handler: MethodRouter<ApiState>,
}

fn route(method: Method, path: &'static str, auth: bool, h: MethodRouter<ApiState>) -> Route {
    Route {
        method,
        path,
        auth,
        handler: h,
    }
}

/// Every call of the API: the router is built from this table and nothing else.
pub fn table() -> Vec<Route> {
    vec![
        route(Method::POST, "/v1/cards", true, post(create_card)),
        route(Method::GET, "/v1/cards", true, get(list_cards)),
        route(Method::POST, "/v1/cards/search", true, post(search_cards)),
        route(Method::GET, "/v1/cards/{vpan}", true, get(show_card)),
        route(
            Method::POST,
            "/v1/cards/{vpan}/pause",
            true,
            post(pause_card),
        ),
        route(
            Method::POST,
            "/v1/cards/{vpan}/resume",
            true,
            post(resume_card),
        ),
        route(
            Method::POST,
            "/v1/cards/{vpan}/close",
            true,
            post(close_card),
        ),
        route(
            Method::GET,
            "/v1/cards/{vpan}/transactions",
            true,
            get(transactions),
        ),
        route(
            Method::GET,
            "/healthz",
            false,
            get(healthz).fallback(method_not_allowed),
        ),
        route(Method::GET, "/v1/openapi.json", true, get(openapi)),
    ]
}

/// A JSON body read strictly, with axum's rejections turned into the contract's errors:
/// 400 for malformed JSON or an unknown key, 413 for a body over the limit. The body is
/// read as JSON whatever its `Content-Type` says: the contract has JSON in and lists no
/// error for a missing or other type, and `curl -d` sends a form's type by default.
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let too_large = || {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!("the body is over {} bytes", super::MAX_BODY_BYTES),
            )
        };
        // Said at once when the client announces it, not after waiting for the bytes.
        let announced = req
            .headers()
            .get(axum::http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if announced.is_some_and(|n| n > super::MAX_BODY_BYTES as u64) {
            return Err(too_large());
        }
        let read = tokio::time::timeout(super::BODY_READ_TIMEOUT, Bytes::from_request(req, state));
        let body = read
            .await
            .map_err(|_| {
                ApiError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    "request_timeout",
                    format!(
                        "the body did not arrive within {} s",
                        super::BODY_READ_TIMEOUT.as_secs()
                    ),
                )
            })?
            .map_err(|r| {
                if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    too_large()
                } else {
                    ApiError::malformed(r.body_text())
                }
            })?;
        let mut json = serde_json::Deserializer::from_slice(&body);
        let value = serde_path_to_error::deserialize(&mut json).map_err(|e| {
            if e.inner().is_syntax() || e.inner().is_eof() {
                not_json(e.inner())
            } else {
                refused(e)
            }
        })?;
        json.end().map_err(|e| not_json(&e))?;
        Ok(JsonBody(value))
    }
}

/// A body that is no JSON at all (a form, nothing), or not only JSON, is said to be so:
/// serde's `expected value at line 1 column 1` alone does not tell a client what is wrong.
fn not_json(e: &serde_json::Error) -> ApiError {
    ApiError::malformed(format!(
        "the body is not JSON ({}): send a JSON object",
        without_quoted_values(&e.to_string())
    ))
}

/// Reads a `T` from what the client sent, or a 400 that says where and why it could not,
/// naming fields but quoting nothing else the client wrote: serde's messages quote the
/// values they refuse and put the path of keys in front, and either may be a card
/// number written in some way the masking of digit runs does not know (`4970_1000_…`).
fn read_strictly<'de, T, D>(from: D) -> Result<T, ApiError>
where
    T: serde::Deserialize<'de>,
    D: serde::Deserializer<'de>,
{
    serde_path_to_error::deserialize(from).map_err(refused)
}

/// [`read_strictly`]'s 400 for what serde refused.
fn refused<E: std::fmt::Display>(e: serde_path_to_error::Error<E>) -> ApiError {
    let why = without_quoted_values(&without_unknown_key(&e.inner().to_string()));
    ApiError::malformed(match shown_path(e.path()) {
        Some(path) => format!("{path}: {why}"),
        None => why,
    })
}

/// serde's `unknown field `KEY`, expected ...` with the key left out: it is the client's
/// text, whatever it holds (backticks that would upset the reading of the rest, digits
/// of any script). The list after it is of the API's own names.
fn without_unknown_key(message: &str) -> String {
    const UNKNOWN: &str = "unknown field `";
    match (message.strip_prefix(UNKNOWN), message.rfind("`, expected")) {
        (Some(_), Some(end)) if end >= UNKNOWN.len() => {
            format!("unknown field `…`{}", &message[end + 1..])
        }
        (Some(_), _) => "unknown field".to_string(),
        _ => message.to_string(),
    }
}

/// Where in the request serde stopped (`merchant_lock.acceptor_id`, `mcc_allow[2]`), with
/// any key that is not shaped as one of the API's field names shown as `…`.
fn shown_path(path: &serde_path_to_error::Path) -> Option<String> {
    use serde_path_to_error::Segment;
    let mut shown = String::new();
    for segment in path.iter() {
        match segment {
            Segment::Seq { index } => shown.push_str(&format!("[{index}]")),
            Segment::Map { key } | Segment::Enum { variant: key } => {
                if !shown.is_empty() {
                    shown.push('.');
                }
                shown.push_str(if field_shaped(key) { key } else { "…" });
            }
            Segment::Unknown => {}
        }
    }
    (!shown.is_empty()).then_some(shown)
}

/// True for text shaped as one of the API's field names (`max_uses`): lower-case letters
/// and underscores, which no card number, however written, is.
fn field_shaped(name: &str) -> bool {
    (1..=40).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
}

/// A JSON error with the values it quotes left out (`invalid type: string "…"`): a card
/// number written with spaces or dashes would otherwise come back whole, as the masking
/// of digit runs does not see it. Field names (in backticks) stay.
fn without_quoted_values(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut chars = message.chars();
    while let Some(c) = chars.next() {
        match c {
            // A value, as serde quotes it: escapes (`\"`) stay inside.
            '"' => {
                while let Some(c) = chars.next() {
                    match c {
                        '\\' => {
                            chars.next();
                        }
                        '"' => break,
                        _ => {}
                    }
                }
                out.push_str("\"…\"");
            }
            // A name or a number, as serde quotes them: kept only when shaped as one of
            // the API's field names (`max_use`), a short number (`5`) or one punctuation
            // mark (the `,` or `}` a JSON syntax error says it expected), as a card number,
            // in whatever digits, is none of them.
            '`' => {
                let name: String = chars.by_ref().take_while(|&c| c != '`').collect();
                let short_number = !name.is_empty()
                    && name.len() <= 6
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_digit() || b == b'-' || b == b'.');
                let punctuation = name.len() == 1 && name.bytes().all(|b| b.is_ascii_punctuation());
                if field_shaped(&name) || short_number || punctuation {
                    out.push('`');
                    out.push_str(&name);
                    out.push('`');
                } else {
                    out.push_str("`…`");
                }
            }
            c => out.push(c),
        }
    }
    out
}

/// A card number as a path segment. A segment axum cannot decode (bad percent-encoding)
/// is no card number either: 404 in the contract's JSON, not axum's plain-text 400.
pub struct CardPath(pub String);

impl<S: Send + Sync> FromRequestParts<S> for CardPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match Path::<String>::from_request_parts(parts, state).await {
            Ok(Path(segment)) => Ok(CardPath(segment)),
            Err(_) => Err(ApiError::card_not_found()),
        }
    }
}

/// The card key of a path segment; anything that is not a card number is simply unknown.
fn key(vpan: &str) -> Result<CardKey, ApiError> {
    CardKey::from_digits(vpan.as_bytes()).ok_or_else(ApiError::card_not_found)
}

fn card_error(e: CardError) -> ApiError {
    match e {
        CardError::NotFound => ApiError::card_not_found(),
        CardError::Closed => {
            ApiError::conflict("the card is closed: it cannot be paused or resumed")
        }
        // The card takes the change in memory as the journal is asked for its record, so
        // it holds now whatever the disk does. A stalled disk may still take the record
        // (asking again with the same status then only waits for it); a failed journal
        // accepts nothing until a restart, which may not find the record.
        CardError::Store(e) => {
            tracing::error!(error = %e, "card change not confirmed durable");
            store_unavailable(
                &e,
                "the change could not be confirmed durable in time (the disk is stalled): it \
                 holds now but may not survive a restart; ask again once /healthz reports the \
                 store up",
                "the change could not be recorded (the store failed): it holds until the \
                 switch restarts, which may lose it; ask again after the restart",
            )
        }
    }
}

/// `503 store_unavailable` for what could not be confirmed durable, saying `stalled` while
/// the disk stalls (it may yet take the record: with `Retry-After`) and `failed` once the
/// store has failed: only a restart mends that, so no `Retry-After`, which a client would
/// obey every second until then.
fn store_unavailable(e: &StoreError, stalled: &'static str, failed: &'static str) -> ApiError {
    match e {
        StoreError::Stalled(_) => ApiError::unavailable("store_unavailable", stalled),
        _ => ApiError::unavailable_until_mended("store_unavailable", failed),
    }
}

/// A card that could not be made durable. The disk stalled: its record may still reach
/// it, so "no card" is not said. The store failed: nothing is recorded until a restart.
fn issue_store_error(e: StoreError) -> ApiError {
    tracing::error!(error = %e, "issuance not confirmed durable");
    store_unavailable(
        &e,
        "the card could not be confirmed durable in time (the disk is stalled); it may still be recorded: send the request again with the same Idempotency-Key once /healthz reports the store up (without one, list the cards before issuing again)",
        "the card could not be recorded durably (the store failed); no card was issued: issue it again after the switch restarts",
    )
}

fn card(view: &CardView) -> Json<CardBody> {
    Json(CardBody::at(view, now()))
}

/// `POST /v1/cards`: validates, issues, waits until the card is durable, answers 201.
/// Under an `Idempotency-Key` the card a key issued is answered again (see
/// [`crate::cards::requests`]).
async fn create_card(
    State(state): State<ApiState>,
    headers: HeaderMap,
    JsonBody(request): JsonBody<CreateCard>,
) -> Result<Response, ApiError> {
    let now = now();
    let key = idempotency_key(&headers)?;
    if let Some(earlier) = key.and_then(|k| state.cards.earlier_request(&k, now)) {
        return issued_again(&state, earlier, request).await;
    }
    // Kept for a twin request that takes the key first (read again as of its card's time).
    let again = key.is_some().then(|| request.clone());
    let spec = request.into_spec(now)?;
    match state.cards.issue_durable_under(&spec, now, key).await {
        Ok(view) => {
            tracing::info!(vpan = %view.vpan, pan = %spec.pan.masked_beside_its_vpan(), "card issued");
            Ok((StatusCode::CREATED, card(&view)).into_response())
        }
        Err(IssueError::KeyTaken(earlier)) => match again {
            Some(request) => issued_again(&state, earlier, request).await,
            None => Err(key_in_flight()),
        },
        Err(IssueError::KeyReused) => Err(key_reused()),
        Err(IssueError::Invalid(message)) => Err(ApiError::invalid(message)),
        // The card's range leaves no digit to draw, or there is none for its BIN: no retry
        // will change that.
        Err(IssueError::Generate(
            e @ (GenerateError::NoRoom { .. } | GenerateError::NoRange { .. }),
        )) => Err(ApiError::invalid(format!("pan: {e}"))),
        Err(IssueError::Generate(e)) => {
            tracing::error!(pan = %spec.pan.masked_beside_its_vpan(), error = %e, "no vPAN could be drawn");
            Err(ApiError::unavailable_until_mended(
                "no_vpan_available",
                format!("{e}: list another range for this BIN in cards.virtual_ranges"),
            ))
        }
        Err(IssueError::Store(e)) => Err(issue_store_error(e)),
    }
}

/// The `Idempotency-Key` header's digest, when the request has one: once, and
/// [`requests::key_shape`].
fn idempotency_key(headers: &HeaderMap) -> Result<Option<RequestKey>, ApiError> {
    let mut values = headers.get_all(IDEMPOTENCY_KEY).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(ApiError::malformed(
            "Idempotency-Key: is given more than once",
        ));
    }
    let key = value.as_bytes();
    if !requests::well_formed(key) {
        return Err(ApiError::malformed(format!(
            "Idempotency-Key: must be {}",
            requests::key_shape()
        )));
    }
    Ok(Some(RequestKey::of(key)))
}

/// A request sent again under the key of an earlier one: the card that one issued, once
/// durable, answered 201 again with `Idempotent-Replayed: true`.
async fn issued_again(
    state: &ApiState,
    earlier: Earlier,
    request: CreateCard,
) -> Result<Response, ApiError> {
    let Earlier::Issued(card_key, created_at) = earlier else {
        return Err(key_in_flight());
    };
    let spec = request.into_spec(created_at)?;
    match state.cards.issued_again(card_key, &spec).await {
        Ok(view) => {
            tracing::info!(vpan = %view.vpan, "card issued earlier under this Idempotency-Key answered again");
            Ok((
                StatusCode::CREATED,
                [(IDEMPOTENT_REPLAYED, "true")],
                card(&view),
            )
                .into_response())
        }
        Err(IssueError::KeyReused) => Err(key_reused()),
        Err(IssueError::Store(e)) => {
            tracing::error!(vpan = %card_key.pan(), error = %e, "card issued earlier under this Idempotency-Key not confirmed durable");
            Err(reissue_store_error(&e))
        }
        Err(_) => Err(key_in_flight()),
    }
}

/// The card a key issued, not confirmed durable when the key's request came again. As for
/// the first request ([`issue_store_error`]), only a stalled disk is a 503 to retry
/// shortly: a failed store records nothing until a restart, and a `Retry-After: 1` there
/// had clients that obey it send the request every second until then.
fn reissue_store_error(e: &StoreError) -> ApiError {
    store_unavailable(
        e,
        "the card this Idempotency-Key issued could not be confirmed durable in time (the disk is stalled): send the request again, with the same key, once /healthz reports the store up",
        "the card this Idempotency-Key issued could not be confirmed durable (the store failed): send the request again, with the same key, after the switch restarts",
    )
}

fn key_in_flight() -> ApiError {
    ApiError::conflict(
        "Idempotency-Key: a request with this key is issuing its card at this moment (or its issuance failed a moment ago); send it again once that one is answered",
    )
}

fn key_reused() -> ApiError {
    ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "idempotency_key_reused",
        "Idempotency-Key: issued a card for a different request (another card, controls or expiry); use a new key for a new card",
    )
}

/// `GET /v1/cards/{vpan}`.
async fn show_card(
    State(state): State<ApiState>,
    CardPath(vpan): CardPath,
) -> Result<Json<CardBody>, ApiError> {
    let view = state
        .cards
        .get(key(&vpan)?)
        .ok_or_else(ApiError::card_not_found)?;
    Ok(card(&view))
}

/// `POST /v1/cards/{vpan}/pause`.
async fn pause_card(
    State(state): State<ApiState>,
    CardPath(vpan): CardPath,
) -> Result<Json<CardBody>, ApiError> {
    let change = state.cards.pause(key(&vpan)?).await.map_err(card_error)?;
    Ok(changed(change, "card paused"))
}

/// `POST /v1/cards/{vpan}/resume`.
async fn resume_card(
    State(state): State<ApiState>,
    CardPath(vpan): CardPath,
) -> Result<Json<CardBody>, ApiError> {
    let change = state.cards.resume(key(&vpan)?).await.map_err(card_error)?;
    Ok(changed(change, "card resumed"))
}

/// `POST /v1/cards/{vpan}/close`.
async fn close_card(
    State(state): State<ApiState>,
    CardPath(vpan): CardPath,
) -> Result<Json<CardBody>, ApiError> {
    let change = state.cards.close(key(&vpan)?).await.map_err(card_error)?;
    Ok(changed(change, "card closed"))
}

/// The card after a status call; logged only when the call changed it, so that the log's
/// lines are the card's history (a client's retry of a pause is not a second pause).
fn changed(change: StatusChange, what: &'static str) -> Json<CardBody> {
    if change.changed {
        tracing::info!(vpan = %change.card.vpan, "{what}");
    }
    card(&change.card)
}

/// `GET /v1/cards/{vpan}/transactions`: newest first.
async fn transactions(
    State(state): State<ApiState>,
    CardPath(vpan): CardPath,
) -> Result<Json<TransactionList>, ApiError> {
    let recent = state
        .cards
        .recent(key(&vpan)?)
        .ok_or_else(ApiError::card_not_found)?;
    Ok(Json(TransactionList {
        transactions: recent.iter().map(TransactionBody::from).collect(),
    }))
}

/// `GET /v1/cards?limit=&after=`: a page of cards in vPAN order.
async fn list_cards(
    State(state): State<ApiState>,
    RawQuery(query): RawQuery,
) -> Result<Json<CardList>, ApiError> {
    let (after, limit) = page_query(query.as_deref())?;
    list_page(&state, after, limit, None).await
}

/// `POST /v1/cards/search?limit=&after=`: the vPANs of the real card in the body, a page
/// at a time as `GET /v1/cards` lists them.
async fn search_cards(
    State(state): State<ApiState>,
    RawQuery(query): RawQuery,
    JsonBody(search): JsonBody<SearchCards>,
) -> Result<Json<CardList>, ApiError> {
    let (after, limit) = page_query(query.as_deref())?;
    let pan = Pan::from_digits_checked(search.pan.as_bytes())
        .map_err(|e| ApiError::invalid(format!("pan: {e}")))?;
    list_page(&state, after, limit, Some(pan)).await
}

/// A listing's `after` and `limit`, from its query.
fn page_query(query: Option<&str>) -> Result<(Option<CardKey>, usize), ApiError> {
    let query = form_urlencoded::parse(query.unwrap_or("").as_bytes());
    let q: ListQuery = read_strictly(serde_urlencoded::Deserializer::new(query))?;
    let limit = match q.limit.as_deref() {
        None => DEFAULT_PAGE,
        Some(text) => text
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_PAGE).contains(n))
            .ok_or_else(|| ApiError::invalid(format!("limit: must be 1 to {MAX_PAGE}")))?,
    };
    let after = match q.after.as_deref() {
        None | Some("") => None,
        Some(text) => Some(CardKey::from_digits(text.as_bytes()).ok_or_else(|| {
            ApiError::invalid("after: must be a vPAN (12 to 19 digits) from the previous page")
        })?),
    };
    Ok((after, limit))
}

/// A page of the cards (of the real card `real` alone, when given).
async fn list_page(
    state: &ApiState,
    after: Option<CardKey>,
    limit: usize,
    real: Option<Pan>,
) -> Result<Json<CardList>, ApiError> {
    // A page walks every card: off the runtime's threads, which the switch's connections
    // share, and one listing at a time, so that listings never hold up authorizations
    // nor fill the memory with pages at once.
    // The permit goes with the walk: a caller that leaves does not end it, nor let another
    // one start beside it.
    let one = state
        .listing
        .clone()
        .acquire_owned()
        .await
        .map_err(|_| ApiError::unavailable("overloaded", "the API is stopping"))?;
    let cards = state.cards.clone();
    let page = tokio::task::spawn_blocking(move || {
        let _one = one;
        let views = match &real {
            None => cards.list(after, limit),
            Some(pan) => cards.list_of_real_card(pan, after, limit),
        };
        let now = now();
        let next_after = (views.len() == limit)
            .then(|| views.last().map(|v| v.vpan.expose().to_string()))
            .flatten();
        CardList {
            cards: views.iter().map(|v| CardBody::at(v, now)).collect(),
            next_after,
        }
    })
    .await
    .map_err(|_| ApiError::unavailable("overloaded", "the listing did not finish"))?;
    Ok(Json(page))
}

/// `GET /healthz`: 200 when every check is up, else 503 naming the ones down.
async fn healthz(State(state): State<ApiState>) -> Response {
    health_response(&state.health)
}

/// The answer of `/healthz`, on the API and on the metrics listener alike.
pub fn health_response(health: &Health) -> Response {
    let results = health.run();
    let down: Vec<&str> = results
        .iter()
        .filter(|(_, up)| !up)
        .map(|(n, _)| *n)
        .collect();
    let checks: serde_json::Map<String, serde_json::Value> = results
        .iter()
        .map(|(n, up)| (n.to_string(), (if *up { "up" } else { "down" }).into()))
        .collect();
    if down.is_empty() {
        let body = serde_json::json!({"status": "ok", "checks": checks});
        (StatusCode::OK, Json(body)).into_response()
    } else {
        let body = serde_json::json!({
            "status": "unavailable",
            "checks": checks,
            "error": {"code": "unhealthy", "message": format!("down: {}", down.join(", "))},
        });
        (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
    }
}

/// `GET /v1/openapi.json`: the document.
async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

/// Unknown paths.
pub async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such endpoint; see GET /v1/openapi.json",
    )
}

/// A known path with a method it does not take.
pub async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this endpoint does not take this method; see GET /v1/openapi.json",
    )
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    fn doc() -> serde_json::Value {
        serde_json::from_str(OPENAPI).expect("openapi.json is JSON")
    }

    #[test]
    fn a_card_change_the_store_could_not_confirm_is_not_said_undone() {
        for (e, says) in [
            (
                StoreError::Stalled(std::time::Duration::from_secs(2)),
                "holds now but may not survive a restart",
            ),
            (
                StoreError::Failed,
                "holds until the switch restarts, which may lose it",
            ),
        ] {
            let answer = card_error(CardError::Store(e));
            assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
            assert!(answer.message.contains(says), "{}", answer.message);
        }
    }

    /// A failed store accepts nothing until a restart: a `Retry-After: 1` beside "ask
    /// again after the restart" had clients that obey it ask every second until then.
    #[test]
    fn only_a_stalled_store_is_a_503_that_asks_for_a_retry_shortly() {
        let stalled = || StoreError::Stalled(std::time::Duration::from_secs(2));
        for (answer, retry) in [
            (card_error(CardError::Store(stalled())), true),
            (issue_store_error(stalled()), true),
            (card_error(CardError::Store(StoreError::Failed)), false),
            (issue_store_error(StoreError::Failed), false),
            (issue_store_error(StoreError::Backlog(10)), false),
            // A request sent again under the Idempotency-Key of a card not yet durable.
            (reissue_store_error(&stalled()), true),
            (reissue_store_error(&StoreError::Failed), false),
            (reissue_store_error(&StoreError::Backlog(10)), false),
        ] {
            let message = answer.message.clone();
            let response = answer.into_response();
            assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
            let header = response.headers().contains_key(header::RETRY_AFTER);
            assert_eq!(header, retry, "{message}");
        }
    }

    #[test]
    fn a_refused_value_is_never_quoted_back_escaped_quotes_and_numbered_keys_included() {
        // A generated card number, written in groups of four as people do.
        let digits = crate::pan::test_pan("497010");
        let groups: Vec<&str> = (0..4).map(|i| &digits[i * 4..i * 4 + 4]).collect();
        let card = groups.join(" ");
        let tail = groups[1..].join(" ");
        for message in [
            format!("amount_limit: invalid type: string \"{card}\", expected i64"),
            format!("invalid type: string \"\\\"{card}\", expected u64"),
            format!("unknown field `{card}`, expected one of `pan`, `currency`"),
        ] {
            let shown = without_quoted_values(&message);
            assert!(!shown.contains(&tail), "{message} -> {shown}");
        }
        assert_eq!(
            without_quoted_values("unknown field `max_use`, expected `pan`"),
            "unknown field `max_use`, expected `pan`"
        );
    }

    #[test]
    fn a_json_syntax_error_keeps_the_marks_it_expected() {
        for message in [
            "expected `,` or `}` at line 1 column 45",
            "expected `,` or `]` at line 1 column 9",
            "expected `:` at line 1 column 8",
            "expected `\"` at line 1 column 2",
        ] {
            assert_eq!(without_quoted_values(message), message);
        }
    }

    #[test]
    fn every_route_is_in_the_openapi_document_and_every_documented_route_is_routed() {
        let routed: BTreeSet<(String, String)> = table()
            .iter()
            .map(|r| (r.method.as_str().to_lowercase(), r.path.to_string()))
            .collect();
        let doc = doc();
        let mut documented = BTreeSet::new();
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for method in item.as_object().expect("path item").keys() {
                if ["get", "post", "put", "patch", "delete"].contains(&method.as_str()) {
                    documented.insert((method.clone(), path.clone()));
                }
            }
        }
        assert_eq!(routed, documented);
    }

    #[test]
    fn the_documented_security_matches_which_routes_need_the_token() {
        let doc = doc();
        for r in table() {
            let op = &doc["paths"][r.path][r.method.as_str().to_lowercase()];
            let open = op["security"].as_array().is_some_and(Vec::is_empty);
            assert_eq!(!open, r.auth, "{} {}", r.method, r.path);
        }
    }

    #[test]
    fn the_documented_request_examples_are_valid_requests() {
        let doc = doc();
        let content =
            &doc["paths"]["/v1/cards"]["post"]["requestBody"]["content"]["application/json"];
        let examples = content["examples"].as_object().expect("examples");
        assert!(examples.len() >= 3);
        // 2026-11-26T15:29:42Z: before every example's validity ends.
        let now = 1_795_706_982;
        for (name, example) in examples {
            let body: CreateCard = serde_json::from_value(example["value"].clone())
                .unwrap_or_else(|e| panic!("example {name}: {e}"));
            body.into_spec(now)
                .unwrap_or_else(|e| panic!("example {name}: {}", e.message));
        }
    }

    #[test]
    fn every_operation_documents_its_error_answers() {
        let doc = doc();
        for r in table().iter().filter(|r| r.auth) {
            let op = &doc["paths"][r.path][r.method.as_str().to_lowercase()];
            assert!(
                op["responses"]["401"].is_object(),
                "{} {}",
                r.method,
                r.path
            );
        }
        // The one call with a body answers what reading a body can go wrong with.
        let create = &doc["paths"]["/v1/cards"]["post"]["responses"];
        for code in ["400", "408", "413", "422"] {
            assert!(create[code].is_object(), "POST /v1/cards documents {code}");
        }
    }
}
