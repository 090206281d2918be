//! The HTTP API: REST routes over the store, the live event stream (Server-Sent Events and
//! WebSocket), Prometheus metrics, bearer-token authentication, and the `subscribe` client.
//!
//! Start it with [`serve`] on a bound listener; it stops when the shutdown token is cancelled
//! (open event streams end too). Every route but `/v1/health` requires
//! `Authorization: Bearer <token>` when a token is configured, and a listener that is
//! reachable from other machines is refused without one ([`ApiStartError::TokenRequired`]).
//! Every error is a JSON object `{"error": "..."}` with a fitting status code.

pub(crate) mod routes;

pub use routes::MAX_BODY_BYTES;
pub mod stream;
pub mod subscribe;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::future::BoxFuture;
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::events::EventBus;
use crate::metrics::Metrics;
use crate::store::{Store, StoreError};

pub use routes::router;

/// What the API asks of the running daemon (the daemon implements it; tests use a small
/// implementation of their own).
pub trait Control: Send + Sync + 'static {
    /// Enqueue a checkpoint by hand (POST /v1/evaluate); Ok = JSON describing what was queued.
    fn evaluate(&self, target: EvaluateTarget) -> BoxFuture<'static, Result<serde_json::Value, ApiError>>;
    /// The judge plugins currently loaded, as JSON (GET /v1/plugins).
    fn plugins(&self) -> serde_json::Value;
}

/// What `POST /v1/evaluate` names: a checkpoint file; a model on the `openai` backend's
/// servers, evaluated by its served name alone; or a file and the name the servers serve it
/// under. At least one of the two is set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvaluateTarget {
    /// An absolute path of a checkpoint file.
    pub path: Option<PathBuf>,
    /// The name the inference servers serve the checkpoint under.
    pub served_model: Option<String>,
}

/// Everything the routes need. Cheap to clone.
#[derive(Clone)]
pub struct ApiState {
    /// The store (read by the REST routes and for event replay).
    pub store: Arc<Store>,
    /// The event bus (live events).
    pub bus: EventBus,
    /// Metrics rendered at `/metrics`.
    pub metrics: Arc<Metrics>,
    /// The daemon's controls.
    pub control: Arc<dyn Control>,
    /// Bearer token required on every route but `/v1/health`; `None` = open (loopback only).
    pub token: Option<String>,
}

impl std::fmt::Debug for ApiState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiState")
            .field("store", &self.store)
            .field("bus", &self.bus)
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .finish()
    }
}

/// An error answered to a client, always as `{"error": "..."}`.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Malformed input (400).
    #[error("{0}")]
    BadRequest(String),
    /// Missing or wrong bearer token (401).
    #[error("missing or invalid bearer token: send `Authorization: Bearer <api.token>`")]
    Unauthorized,
    /// A request for something this client may not have (403).
    #[error("{0}")]
    Forbidden(String),
    /// A request body over the API's limit (413).
    #[error("{0}")]
    TooLarge(String),
    /// Something that does not exist (404).
    #[error("{0}")]
    NotFound(String),
    /// A method a route does not accept (405).
    #[error("method not allowed")]
    MethodNotAllowed,
    /// A request that conflicts with the current state, e.g. already queued (409).
    #[error("{0}")]
    Conflict(String),
    /// Well-formed input that cannot be acted on, e.g. not a GGUF file (422).
    #[error("{0}")]
    Unprocessable(String),
    /// The daemon cannot take the request now (503).
    #[error("{0}")]
    Unavailable(String),
    /// The store failed (500).
    #[error("store failure: {0}")]
    Store(StoreError),
    /// Any other server-side failure (500).
    #[error("internal error: {0}")]
    Internal(String),
}

error_from!(StoreError => ApiError::Store);

impl ApiError {
    /// The HTTP status of this error.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Store(StoreError::NotFound { .. }) => StatusCode::NOT_FOUND,
            ApiError::Store(_) | ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::error!(error = %self, "API request failed");
        }
        let mut resp = (status, Json(json!({ "error": self.to_string() }))).into_response();
        if matches!(self, ApiError::Unauthorized) {
            resp.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer realm=\"driftwatch\""),
            );
        }
        resp
    }
}

/// Why the API could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ApiStartError {
    /// A listener reachable from other machines without a bearer token.
    #[error("refusing to serve the API on {addr} without a token: it is reachable from other machines; set api.token (or DRIFTWATCH_API_TOKEN) or listen on a loopback address")]
    TokenRequired {
        /// The listening address.
        addr: SocketAddr,
    },
    /// The token is set but empty.
    #[error("api.token must not be empty")]
    EmptyToken,
    /// The address could not be bound.
    #[error("cannot listen on {addr}: {cause}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The I/O error.
        cause: std::io::Error,
    },
    /// The listener failed.
    #[error("API server failed: {0}")]
    Io(std::io::Error),
}

error_from!(std::io::Error => ApiStartError::Io);

/// Checks that serving on `addr` with `token` is allowed: a non-loopback address needs a
/// non-empty token.
pub fn check_listen(addr: SocketAddr, token: Option<&str>) -> Result<(), ApiStartError> {
    match token {
        Some(t) if t.trim().is_empty() => Err(ApiStartError::EmptyToken),
        Some(_) => Ok(()),
        None if addr.ip().is_loopback() => Ok(()),
        None => Err(ApiStartError::TokenRequired { addr }),
    }
}

/// Binds `addr` after [`check_listen`] (so nothing is ever bound insecurely).
pub async fn bind(addr: SocketAddr, token: Option<&str>) -> Result<TcpListener, ApiStartError> {
    check_listen(addr, token)?;
    TcpListener::bind(addr).await.map_err(|cause| ApiStartError::Bind { addr, cause })
}

/// Serves the API on `listener` until `shutdown` is cancelled. Refuses a non-loopback
/// listener without a token.
pub async fn serve(state: ApiState, listener: TcpListener, shutdown: CancellationToken) -> Result<(), ApiStartError> {
    let addr = listener.local_addr()?;
    check_listen(addr, state.token.as_deref())?;
    tracing::info!(%addr, auth = state.token.is_some(), "HTTP API listening");
    let app = router(state, shutdown.clone());
    axum::serve(listener, app).with_graceful_shutdown(shutdown.cancelled_owned()).await?;
    Ok(())
}

/// An error with its causes, `outer: inner: innermost` (reqwest's own message alone hides
/// why a request failed).
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(s) = cause {
        let t = s.to_string();
        if !text.contains(&t) {
            text.push_str(": ");
            text.push_str(&t);
        }
        cause = s.source();
    }
    text
}

/// Compares two byte strings in time that depends only on their lengths.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_rules() {
        let lo: SocketAddr = "127.0.0.1:7878".parse().unwrap();
        let lo6: SocketAddr = "[::1]:7878".parse().unwrap();
        let any: SocketAddr = "0.0.0.0:7878".parse().unwrap();
        assert!(check_listen(lo, None).is_ok());
        assert!(check_listen(lo6, None).is_ok());
        assert!(matches!(check_listen(any, None), Err(ApiStartError::TokenRequired { .. })));
        assert!(check_listen(any, Some("s3cret")).is_ok());
        assert!(matches!(check_listen(lo, Some("  ")), Err(ApiStartError::EmptyToken)));
    }

    #[test]
    fn error_chains_name_every_cause() {
        let inner = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "connection refused");
        let outer = ApiStartError::Bind { addr: "127.0.0.1:1".parse().unwrap(), cause: inner };
        // Bind's message already includes its cause once; it is not repeated.
        assert_eq!(error_chain(&outer), "cannot listen on 127.0.0.1:1: connection refused");
        let e = StoreError::Task("boom".into());
        assert_eq!(error_chain(&ApiError::Store(e)), "store failure: store task failed: boom");
    }

    #[test]
    fn constant_time_comparison() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
        assert!(constant_time_eq(b"", b""));
    }

    #[test]
    fn error_statuses() {
        assert_eq!(ApiError::BadRequest("x".into()).status(), StatusCode::BAD_REQUEST);
        assert_eq!(ApiError::Store(StoreError::NotFound { what: "run", id: 3 }).status(), StatusCode::NOT_FOUND);
        assert_eq!(ApiError::Store(StoreError::Task("x".into())).status(), StatusCode::INTERNAL_SERVER_ERROR);
    }
}
