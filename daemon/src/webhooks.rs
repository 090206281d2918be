//! Webhook delivery: one task per `[[api.webhooks]]` entry POSTs every matching event, in id
//! order, read from the *store* by a durable cursor.
//!
//! Each body is the event as JSON (`{"id","type","time_ms","payload"}`) with the headers
//! `X-Driftwatch-Event-Id`, `X-Driftwatch-Event-Type` and, when a secret is configured,
//! `X-Driftwatch-Signature: sha256=<hex HMAC-SHA256(secret, body)>`. A failed delivery (an
//! error or a non-2xx answer) is retried with capped exponential backoff until it succeeds —
//! events are never skipped. The cursor is stored after every delivery, so a restart neither
//! drops an event nor re-sends a delivered one (only a delivery cut off in flight is repeated).
//! The tasks sleep until the bus announces a new event.
//!
//! A webhook seen for the first time starts at the newest stored event (it is not flooded with
//! history) unless [`WebhookOptions::deliver_history`] is set.

use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::sync::broadcast::error::TryRecvError;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::{ApiConfig, WebhookConfig};
use crate::events::EventBus;
use crate::store::{Event, EventId, Store, StoreError};

/// Events read from the store per query.
const PAGE: usize = 100;

/// Tuning of the delivery tasks.
#[derive(Debug, Clone)]
pub struct WebhookOptions {
    /// First retry delay.
    pub initial_backoff: Duration,
    /// Longest retry delay.
    pub max_backoff: Duration,
    /// Time limit of one POST.
    pub request_timeout: Duration,
    /// A webhook seen for the first time gets every stored event (instead of starting at the
    /// newest).
    pub deliver_history: bool,
}

impl Default for WebhookOptions {
    fn default() -> Self {
        WebhookOptions {
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(300),
            request_timeout: Duration::from_secs(10),
            deliver_history: false,
        }
    }
}

/// Errors of one delivery attempt (recorded in the store, then retried).
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    /// The request could not be sent or timed out.
    #[error("request failed: {0}")]
    Request(reqwest::Error),
    /// The receiver answered with a non-2xx status.
    #[error("receiver answered {0}")]
    Status(reqwest::StatusCode),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

error_from!(reqwest::Error => DeliveryError::Request);

/// `sha256=<hex HMAC-SHA256(secret, body)>`: the `X-Driftwatch-Signature` header value.
pub fn signature(secret: &str, body: &[u8]) -> String {
    // HMAC accepts keys of any length.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Starts a delivery task for every configured webhook; the handle finishes when all stop
/// (after `shutdown` is cancelled).
pub fn spawn_webhooks(
    config: &ApiConfig,
    store: Arc<Store>,
    bus: EventBus,
    shutdown: CancellationToken,
) -> JoinHandle<()> {
    spawn_webhooks_with(&config.webhooks, store, bus, shutdown, WebhookOptions::default())
}

/// [`spawn_webhooks`] with explicit webhooks and options (a webhook's own
/// `max_retry_delay_s` replaces `options.max_backoff`).
pub fn spawn_webhooks_with(
    webhooks: &[WebhookConfig],
    store: Arc<Store>,
    bus: EventBus,
    shutdown: CancellationToken,
    options: WebhookOptions,
) -> JoinHandle<()> {
    let client = reqwest::Client::builder()
        .timeout(options.request_timeout)
        .user_agent(concat!("driftwatch/", env!("CARGO_PKG_VERSION")))
        .build();
    let tasks: Vec<JoinHandle<()>> = match client {
        Ok(client) => webhooks
            .iter()
            .cloned()
            .map(|hook| {
                let mut options = options.clone();
                if let Some(s) = hook.max_retry_delay_s {
                    options.max_backoff = Duration::from_secs(s);
                }
                let d = Delivery {
                    hook,
                    store: Arc::clone(&store),
                    bus: bus.clone(),
                    client: client.clone(),
                    options,
                    shutdown: shutdown.clone(),
                };
                tokio::spawn(d.run())
            })
            .collect(),
        Err(e) => {
            tracing::error!(error = %e, "cannot build the webhook HTTP client; webhooks are off");
            Vec::new()
        }
    };
    tokio::spawn(async move {
        for t in tasks {
            if let Err(e) = t.await {
                tracing::error!(error = %e, "a webhook task failed");
            }
        }
    })
}

struct Delivery {
    hook: WebhookConfig,
    store: Arc<Store>,
    bus: EventBus,
    client: reqwest::Client,
    options: WebhookOptions,
    shutdown: CancellationToken,
}

impl Delivery {
    async fn store_call<R: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> Result<R, StoreError> + Send + 'static,
    ) -> Result<R, StoreError> {
        let store = Arc::clone(&self.store);
        tokio::task::spawn_blocking(move || f(&store)).await.map_err(|e| StoreError::Task(e.to_string()))?
    }

    /// Sleeps unless shut down first; false = shut down.
    async fn sleep(&self, d: Duration) -> bool {
        tokio::select! {
            _ = self.shutdown.cancelled() => false,
            _ = tokio::time::sleep(d) => true,
        }
    }

    async fn start_cursor(&self) -> Result<EventId, StoreError> {
        let name = self.hook.name().to_string();
        let history = self.options.deliver_history;
        self.store_call(move |s| {
            if let Some(c) = s.webhook_cursor(&name)? {
                return Ok(c.last_event_id);
            }
            let start = if history { 0 } else { s.last_event_id()? };
            s.record_webhook_delivered(&name, start)?;
            Ok(start)
        })
        .await
    }

    async fn run(self) {
        let name = self.hook.name().to_string();
        // Subscribed before the first store read, so no wake-up is missed.
        let mut rx = self.bus.subscribe();
        let mut backoff = self.options.initial_backoff;
        let mut cursor = loop {
            match self.start_cursor().await {
                Ok(c) => break c,
                Err(e) => {
                    tracing::error!(webhook = %name, error = %e, "cannot read the webhook cursor; retrying");
                    if !self.sleep(backoff).await {
                        return;
                    }
                    backoff = (backoff * 2).min(self.options.max_backoff);
                }
            }
        };
        tracing::info!(webhook = %name, cursor, "webhook delivery started");
        let patterns: Vec<String> = self.hook.events.clone();
        loop {
            if self.shutdown.is_cancelled() {
                return;
            }
            // Forget wake-ups for what the store read below will return anyway.
            while let Ok(_) | Err(TryRecvError::Lagged(_)) = rx.try_recv() {}
            let p = patterns.clone();
            let after = cursor;
            let page = self
                .store_call(move |s| s.events_since(after, &p.iter().map(String::as_str).collect::<Vec<_>>(), PAGE))
                .await;
            let page = match page {
                Ok(p) => p,
                Err(e) => {
                    tracing::error!(webhook = %name, error = %e, "cannot read events for a webhook; retrying");
                    if !self.sleep(self.options.initial_backoff).await {
                        return;
                    }
                    continue;
                }
            };
            if page.is_empty() {
                tokio::select! {
                    _ = self.shutdown.cancelled() => return,
                    r = rx.recv() => {
                        if let Err(tokio::sync::broadcast::error::RecvError::Closed) = r {
                            // The bus is gone: nothing new can arrive.
                            return;
                        }
                    }
                }
                continue;
            }
            for event in page {
                if !self.deliver_until_done(&event).await {
                    return;
                }
                cursor = event.id;
            }
        }
    }

    /// Delivers one event, retrying with backoff until it is accepted; false = shut down first.
    async fn deliver_until_done(&self, event: &Event) -> bool {
        let name = self.hook.name().to_string();
        let body = match serde_json::to_vec(event) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(webhook = %name, id = event.id, error = %e, "cannot encode an event");
                return true;
            }
        };
        let mut backoff = self.options.initial_backoff;
        loop {
            let attempt = tokio::select! {
                _ = self.shutdown.cancelled() => return false,
                r = self.post(event, body.clone()) => r,
            };
            match attempt {
                Ok(()) => {
                    let (n, id) = (name.clone(), event.id);
                    // The cursor must move, or a restart would re-send: retry the store too.
                    let mut store_backoff = self.options.initial_backoff;
                    loop {
                        let (n2, id2) = (n.clone(), id);
                        match self.store_call(move |s| s.record_webhook_delivered(&n2, id2)).await {
                            Ok(()) => return true,
                            Err(e) => {
                                tracing::error!(webhook = %name, id, error = %e, "cannot record a webhook delivery; retrying");
                                if !self.sleep(store_backoff).await {
                                    return false;
                                }
                                store_backoff = (store_backoff * 2).min(self.options.max_backoff);
                            }
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(webhook = %name, id = event.id, error = %e, retry_in_ms = backoff.as_millis() as u64, "webhook delivery failed");
                    let (n, msg) = (name.clone(), crate::api::error_chain(&e));
                    if let Err(se) = self.store_call(move |s| s.record_webhook_failure(&n, &msg)).await {
                        tracing::error!(webhook = %name, error = %se, "cannot record a webhook failure");
                    }
                    if !self.sleep(backoff).await {
                        return false;
                    }
                    backoff = (backoff * 2).min(self.options.max_backoff);
                }
            }
        }
    }

    async fn post(&self, event: &Event, body: Vec<u8>) -> Result<(), DeliveryError> {
        let mut req = self
            .client
            .post(&self.hook.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header("X-Driftwatch-Event-Id", event.id.to_string())
            .header("X-Driftwatch-Event-Type", event.event_type.as_str());
        if let Some(secret) = &self.hook.secret {
            req = req.header("X-Driftwatch-Signature", signature(secret, &body));
        }
        let resp = req.body(body).send().await?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(DeliveryError::Status(resp.status()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_matches_the_rfc_4231_vector() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
