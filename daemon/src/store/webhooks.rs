//! The `webhook_deliveries` table: each webhook's delivery cursor and failure count.

use rusqlite::{params, OptionalExtension};
use serde::{Deserialize, Serialize};

use super::{now_ms, to_u32, EventId, Result, Store};

/// Delivery state of one webhook.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WebhookCursor {
    /// Webhook name.
    pub webhook: String,
    /// Id of the last event delivered.
    pub last_event_id: EventId,
    /// When it was last updated (Unix ms).
    pub updated_at_ms: i64,
    /// Consecutive failures.
    pub failures: u32,
    /// Last error.
    pub last_error: Option<String>,
}

impl Store {
    /// The delivery cursor of a webhook.
    pub fn webhook_cursor(&self, webhook: &str) -> Result<Option<WebhookCursor>> {
        self.read(|c| {
            Ok(c.query_row(
                "SELECT webhook, last_event_id, updated_at, failures, last_error
                 FROM webhook_deliveries WHERE webhook = ?1",
                [webhook],
                |r| {
                    Ok(WebhookCursor {
                        webhook: r.get(0)?,
                        last_event_id: r.get(1)?,
                        updated_at_ms: r.get(2)?,
                        failures: to_u32(r.get(3)?),
                        last_error: r.get(4)?,
                    })
                },
            )
            .optional()?)
        })
    }

    /// Records that events up to `event_id` were delivered (never moves the cursor back;
    /// resets the failure count).
    pub fn record_webhook_delivered(&self, webhook: &str, event_id: EventId) -> Result<()> {
        self.write(|c| {
            c.execute(
                "INSERT INTO webhook_deliveries (webhook, last_event_id, updated_at, failures)
                 VALUES (?1, ?2, ?3, 0)
                 ON CONFLICT (webhook) DO UPDATE SET
                    last_event_id = MAX(last_event_id, excluded.last_event_id),
                    updated_at = excluded.updated_at, failures = 0, last_error = NULL",
                params![webhook, event_id, now_ms()],
            )?;
            Ok(())
        })
    }

    /// Records a failed delivery attempt (the cursor stays).
    pub fn record_webhook_failure(&self, webhook: &str, error: &str) -> Result<()> {
        self.write(|c| {
            c.execute(
                "INSERT INTO webhook_deliveries (webhook, last_event_id, updated_at, failures, last_error)
                 VALUES (?1, 0, ?2, 1, ?3)
                 ON CONFLICT (webhook) DO UPDATE SET
                    updated_at = excluded.updated_at, failures = failures + 1,
                    last_error = excluded.last_error",
                params![webhook, now_ms(), error],
            )?;
            Ok(())
        })
    }
}
