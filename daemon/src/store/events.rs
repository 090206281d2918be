//! The `events` table: the append-only event log subscribers resume from.

use rusqlite::params;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{now_ms, to_i64, EventId, Result, Store};

/// An event of the log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Monotonic id.
    pub id: EventId,
    /// Type, e.g. `run.completed`.
    #[serde(rename = "type")]
    pub event_type: String,
    /// Unix ms.
    pub time_ms: i64,
    /// Payload.
    pub payload: Value,
}

impl Store {
    /// Appends an event; returns its id (strictly greater than every earlier id).
    pub fn append_event(&self, event_type: &str, payload: &Value) -> Result<EventId> {
        Ok(self.append_event_record(event_type, payload)?.id)
    }

    /// Appends an event; returns it exactly as [`Store::events_since`] will return it.
    pub fn append_event_record(&self, event_type: &str, payload: &Value) -> Result<Event> {
        let text = serde_json::to_string(payload)?;
        let time_ms = now_ms();
        let id = self.write(|c| {
            c.prepare_cached("INSERT INTO events (type, time, payload) VALUES (?1, ?2, ?3)")?
                .execute(params![event_type, time_ms, text])?;
            Ok(c.last_insert_rowid())
        })?;
        Ok(Event { id, event_type: event_type.to_owned(), time_ms, payload: payload.clone() })
    }

    /// Events with id > `after`, oldest first, at most `limit`. `types` filters by type;
    /// an entry may end in `*` to match a prefix (`run.*`); empty means all types.
    pub fn events_since(&self, after: EventId, types: &[&str], limit: usize) -> Result<Vec<Event>> {
        self.read(|c| {
            let mut sql = String::from("SELECT id, type, time, payload FROM events WHERE id > ?");
            let mut args: Vec<rusqlite::types::Value> = vec![after.into()];
            if !types.is_empty() {
                sql.push_str(" AND (");
                for (i, t) in types.iter().enumerate() {
                    if i > 0 {
                        sql.push_str(" OR ");
                    }
                    match t.strip_suffix('*') {
                        Some(prefix) => {
                            sql.push_str("substr(type, 1, ?) = ?");
                            args.push((prefix.len() as i64).into());
                            args.push(prefix.to_string().into());
                        }
                        None => {
                            sql.push_str("type = ?");
                            args.push(t.to_string().into());
                        }
                    }
                }
                sql.push(')');
            }
            sql.push_str(" ORDER BY id LIMIT ?");
            args.push(to_i64(limit as u64).into());
            let mut st = c.prepare_cached(&sql)?;
            let rows = st.query_map(rusqlite::params_from_iter(args), |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?, r.get::<_, i64>(2)?, r.get::<_, String>(3)?))
            })?;
            rows.map(|row| {
                let (id, event_type, time_ms, payload) = row?;
                Ok(Event { id, event_type, time_ms, payload: serde_json::from_str(&payload)? })
            })
            .collect()
        })
    }

    /// Id of the newest event (0 when there is none).
    pub fn last_event_id(&self) -> Result<EventId> {
        self.read(|c| Ok(c.query_row("SELECT COALESCE(MAX(id), 0) FROM events", [], |r| r.get(0))?))
    }
}
