//! Who may call the API: one bearer token, compared in constant time.
//!
//! The token comes from `api.token`, or, when that is empty, from `<data_dir>/api-token`,
//! made at first start (32 random bytes as hex, mode 0600) and reused after, so an operator
//! reads it from a file that only vpan's user can open. The log says where the file is,
//! never what it holds. Every call but `/healthz` needs it, the OpenAPI document included.

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use rand::RngExt;
use subtle::ConstantTimeEq;

use super::error::ApiError;
use crate::config::Secret;

/// File name of the generated token inside the data directory.
pub const TOKEN_FILE: &str = "api-token";

/// The token a caller must present, kept as bytes for the constant-time compare.
#[derive(Clone)]
pub struct Token(Arc<Secret>);

impl Token {
    /// Wraps the configured or generated secret.
    pub fn new(secret: Secret) -> Token {
        Token(Arc::new(secret))
    }

    /// True when `presented` is the token. Constant time in the token's content (the
    /// length may show, and a generated token's length is public anyway).
    pub fn matches(&self, presented: &[u8]) -> bool {
        let expected = self.0.expose().as_bytes();
        !expected.is_empty() && bool::from(expected.ct_eq(presented))
    }
}

/// Uses `configured` when set; otherwise reads `<data_dir>/api-token`, creating it (0600)
/// at first start. Returns the secret and the file it came from, if any.
pub fn load_or_create(
    configured: &Secret,
    data_dir: &Path,
) -> std::io::Result<(Secret, Option<PathBuf>)> {
    if !configured.is_empty() {
        // Trimmed as the token file and the presented credentials are: a secret mounted
        // from a file or an environment variable often ends in a newline, and kept as it
        // is no caller could ever match it.
        // (One of only whitespace is refused with the configuration.)
        let token = configured.expose().trim_ascii();
        warn_if_short(token.len(), "api.token");
        return Ok((Secret::new(token), None));
    }
    crate::store::create_private_dir(data_dir)?;
    let path = data_dir.join(TOKEN_FILE);
    match OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
    {
        Ok(mut file) => {
            let mut raw = [0u8; 32];
            rand::rng().fill(&mut raw[..]);
            let token: String = raw.iter().map(|b| format!("{b:02x}")).collect();
            file.write_all(token.as_bytes())?;
            file.write_all(b"\n")?;
            file.sync_all()?;
            tracing::info!(path = %path.display(), "created the API token file");
            Ok((Secret::new(token), Some(path)))
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let mut file = OpenOptions::new().read(true).open(&path)?;
            crate::store::warn_if_open_to_others(&path, "the API token file");
            let mut text = String::new();
            file.read_to_string(&mut text)?;
            let token = text.trim();
            if token.is_empty() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("{} is empty; delete it to make a new token", path.display()),
                ));
            }
            warn_if_short(token.len(), &path.display().to_string());
            tracing::info!(path = %path.display(), "API token read from file");
            Ok((Secret::new(token), Some(path)))
        }
        Err(e) => Err(e),
    }
}

/// Characters under which a token is said to be guessable (the one vpan makes has 64).
const SHORT_TOKEN: usize = 32;

/// Warns (once, at start) of a token short enough to guess: it is the API's only lock.
fn warn_if_short(len: usize, from: &str) {
    if len < SHORT_TOKEN {
        tracing::warn!(
            from,
            characters = len,
            "the API token is short enough to guess; use {SHORT_TOKEN} or more random characters (the one vpan makes has 64)"
        );
    }
}

/// Middleware: lets the request through only with `Authorization: Bearer <token>` (the
/// scheme's name in any case, as RFC 7235 has it); a refusal says which scheme it wants
/// (`WWW-Authenticate`, RFC 6750).
pub async fn require_token(State(token): State<Token>, request: Request, next: Next) -> Response {
    let presented = request
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| bearer_credentials(v.as_bytes()));
    match presented {
        Some(p) if token.matches(p) => next.run(request).await,
        _ => {
            let mut refused = ApiError::unauthorized().into_response();
            refused.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
            refused
        }
    }
}

/// The credentials of an `Authorization` value of the Bearer scheme.
fn bearer_credentials(value: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = value.split_at_checked(b"Bearer ".len())?;
    scheme
        .eq_ignore_ascii_case(b"Bearer ")
        .then(|| rest.trim_ascii())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn the_bearer_scheme_is_read_in_any_case() {
        assert_eq!(bearer_credentials(b"Bearer abc"), Some(&b"abc"[..]));
        assert_eq!(bearer_credentials(b"bearer abc "), Some(&b"abc"[..]));
        assert_eq!(bearer_credentials(b"BEARER abc"), Some(&b"abc"[..]));
        assert_eq!(bearer_credentials(b"Basic abc"), None);
        assert_eq!(bearer_credentials(b"Bear"), None);
    }

    #[test]
    fn only_the_exact_token_matches() {
        let t = Token::new(Secret::new("abc123"));
        assert!(t.matches(b"abc123"));
        assert!(!t.matches(b"abc124"));
        assert!(!t.matches(b"abc12"));
        assert!(!t.matches(b""));
    }

    #[test]
    fn an_empty_token_matches_nothing() {
        assert!(!Token::new(Secret::default()).matches(b""));
    }

    #[test]
    fn a_generated_token_is_made_once_with_mode_0600_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let (first, path) = load_or_create(&Secret::default(), dir.path()).unwrap();
        let path = path.unwrap();
        assert_eq!(first.expose().len(), 64);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let (second, _) = load_or_create(&Secret::default(), dir.path()).unwrap();
        assert_eq!(first, second);
    }

    #[test]
    fn a_configured_token_is_used_and_no_file_is_made() {
        let dir = tempfile::tempdir().unwrap();
        let (t, path) = load_or_create(&Secret::new("configured"), dir.path()).unwrap();
        assert_eq!(t.expose(), "configured");
        assert!(path.is_none());
        let (t, _) = load_or_create(&Secret::new("configured\n"), dir.path()).unwrap();
        assert_eq!(
            t.expose(),
            "configured",
            "the newline of a mounted secret is no part of it"
        );
        assert!(!dir.path().join(TOKEN_FILE).exists());
    }
}
