//! The client behind `driftwatch subscribe` ([`crate::cli::subscribe`]): follows a daemon's
//! event stream (SSE) and prints each event as a readable line or as raw JSON, reconnecting
//! with backoff and resuming after the last id printed, so nothing is missed or printed twice
//! across reconnects.

use std::io::Write;
use std::time::Duration;

use futures::StreamExt;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::store::{Event, EventId};

pub use crate::cli::subscribe::SubscribeArgs;

/// Why `subscribe` stopped.
#[derive(Debug, thiserror::Error)]
pub enum SubscribeError {
    /// The daemon refused the request for good (bad token, bad filter, …): retrying cannot help.
    #[error("the daemon refused the subscription ({status}): {message}")]
    Refused {
        /// HTTP status.
        status: u16,
        /// The daemon's error message.
        message: String,
    },
    /// A bad argument.
    #[error("{0}")]
    BadArgs(String),
    /// Writing the output failed (e.g. a closed pipe).
    #[error("cannot write output: {0}")]
    Output(std::io::Error),
}

error_from!(std::io::Error => SubscribeError::Output);

/// Longest wait between reconnect attempts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
/// A stream silent this long (the daemon sends a keep-alive after 15 s without an event) is
/// reconnected.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Follows the stream, writing one line per event to `out`, until `shutdown` or `--count`.
pub async fn subscribe_to<W: Write>(
    args: &SubscribeArgs,
    out: &mut W,
    shutdown: CancellationToken,
) -> Result<(), SubscribeError> {
    let base = args.url.trim_end_matches('/');
    if !(base.starts_with("http://") || base.starts_with("https://")) {
        return Err(SubscribeError::BadArgs(format!("--url {base:?} must start with http:// or https://")));
    }
    if args.since.is_some_and(|s| s < 0) {
        return Err(SubscribeError::BadArgs("--since must not be negative".into()));
    }
    let client = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .user_agent(concat!("driftwatch-subscribe/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| SubscribeError::BadArgs(format!("cannot build an HTTP client: {e}")))?;
    let mut last: Option<EventId> = args.since;
    let mut printed: u64 = 0;
    let mut backoff = FIRST_BACKOFF;
    loop {
        if shutdown.is_cancelled() {
            return Ok(());
        }
        if last.is_none() {
            // Only new events: pin "now" first, so a reconnect before the first event cannot
            // miss anything published meanwhile.
            match newest_event_id(&client, base).await {
                Ok(id) => last = Some(id),
                Err(e) => {
                    eprintln!("subscribe: cannot reach {base}: {e}; retrying in {:.1}s", backoff.as_secs_f64());
                    if !sleep(&shutdown, backoff).await {
                        return Ok(());
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
            }
        }
        let mut req = client.get(format!("{base}/v1/events")).header(reqwest::header::ACCEPT, "text/event-stream");
        if let Some(t) = &args.types {
            req = req.query(&[("types", t.as_str())]);
        }
        if let Some(id) = last {
            req = req.header("Last-Event-ID", id.to_string());
        }
        if let Some(t) = &args.token {
            req = req.bearer_auth(t);
        }
        let outcome = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            r = req.send() => r,
        };
        let resp = match outcome {
            Ok(r) => r,
            Err(e) => {
                eprintln!(
                    "subscribe: cannot connect to {base}: {}; retrying in {:.1}s",
                    super::error_chain(&e),
                    backoff.as_secs_f64()
                );
                if !sleep(&shutdown, backoff).await {
                    return Ok(());
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        let status = resp.status();
        if status.is_client_error() {
            let text = resp.text().await.unwrap_or_default();
            let message = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| v["error"].as_str().map(str::to_owned))
                .unwrap_or(text);
            return Err(SubscribeError::Refused { status: status.as_u16(), message });
        }
        if !status.is_success() {
            eprintln!("subscribe: the daemon answered {status}; retrying in {:.1}s", backoff.as_secs_f64());
            if !sleep(&shutdown, backoff).await {
                return Ok(());
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
            continue;
        }
        let mut body = resp.bytes_stream();
        let mut parser = SseParser::default();
        let mut got_any = false;
        let reason = loop {
            let chunk = tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                c = tokio::time::timeout(IDLE_TIMEOUT, body.next()) => c,
            };
            let Ok(chunk) = chunk else {
                break format!("nothing (not even a keep-alive) for {}s", IDLE_TIMEOUT.as_secs());
            };
            match chunk {
                None => break "the daemon closed the stream".to_string(),
                Some(Err(e)) => break format!("stream broke: {}", super::error_chain(&e)),
                Some(Ok(bytes)) => {
                    for msg in parser.feed(&bytes) {
                        got_any = true;
                        match msg.event.as_deref() {
                            Some("error") => {
                                eprintln!("subscribe: the daemon ended the stream: {}", msg.data);
                            }
                            _ => {
                                let Ok(ev) = serde_json::from_str::<Event>(&msg.data) else {
                                    eprintln!("subscribe: ignoring an unreadable event: {}", msg.data);
                                    continue;
                                };
                                if last.is_some_and(|l| ev.id <= l) {
                                    continue; // never print twice
                                }
                                let line = if args.json {
                                    serde_json::to_string(&ev).unwrap_or_default()
                                } else {
                                    summary(&ev)
                                };
                                writeln!(out, "{line}")?;
                                out.flush()?;
                                last = Some(ev.id);
                                printed += 1;
                                if args.count.is_some_and(|c| printed >= c) {
                                    return Ok(());
                                }
                            }
                        }
                    }
                }
            }
        };
        if got_any {
            backoff = FIRST_BACKOFF;
        }
        eprintln!("subscribe: {reason}; reconnecting in {:.1}s", backoff.as_secs_f64());
        if !sleep(&shutdown, backoff).await {
            return Ok(());
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// The daemon's newest event id, from `/v1/health` (open without a token).
async fn newest_event_id(client: &reqwest::Client, base: &str) -> Result<EventId, String> {
    let resp = client.get(format!("{base}/v1/health")).send().await.map_err(|e| super::error_chain(&e))?;
    let status = resp.status();
    let v: Value = resp.json().await.map_err(|e| format!("bad health answer ({status}): {e}"))?;
    v["last_event_id"].as_i64().ok_or_else(|| format!("health answer ({status}) has no last_event_id: {v}"))
}

async fn sleep(shutdown: &CancellationToken, d: Duration) -> bool {
    tokio::select! {
        _ = shutdown.cancelled() => false,
        _ = tokio::time::sleep(d) => true,
    }
}

/// One Server-Sent Events message.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SseMessage {
    /// `id:` field.
    pub id: Option<String>,
    /// `event:` field.
    pub event: Option<String>,
    /// `data:` lines joined with `\n`.
    pub data: String,
}

/// An incremental parser of an SSE byte stream (any chunking; `\n`, `\r\n` or `\r` line ends).
#[derive(Debug, Default)]
pub struct SseParser {
    buf: Vec<u8>,
    cur: SseMessage,
    has_data: bool,
}

impl SseParser {
    /// Feeds bytes; returns the messages completed by them.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<SseMessage> {
        self.buf.extend_from_slice(bytes);
        let mut out = Vec::new();
        while let Some(pos) = self.buf.iter().position(|&b| b == b'\n' || b == b'\r') {
            // A lone '\r' at the end may be the first half of "\r\n": wait for more.
            if self.buf[pos] == b'\r' && pos + 1 == self.buf.len() {
                break;
            }
            let skip = if self.buf[pos] == b'\r' && self.buf.get(pos + 1) == Some(&b'\n') { 2 } else { 1 };
            let line: Vec<u8> = self.buf.drain(..pos + skip).take(pos).collect();
            let line = String::from_utf8_lossy(&line);
            if line.is_empty() {
                if self.has_data {
                    out.push(std::mem::take(&mut self.cur));
                } else {
                    self.cur = SseMessage::default();
                }
                self.has_data = false;
                continue;
            }
            if line.starts_with(':') {
                continue; // comment / keep-alive
            }
            let (field, value) = match line.split_once(':') {
                Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
                None => (line.as_ref(), ""),
            };
            match field {
                "id" => self.cur.id = Some(value.to_string()),
                "event" => self.cur.event = Some(value.to_string()),
                "data" => {
                    if self.has_data {
                        self.cur.data.push('\n');
                    }
                    self.cur.data.push_str(value);
                    self.has_data = true;
                }
                _ => {}
            }
        }
        out
    }
}

fn f3(x: f64) -> String {
    format!("{x:.2}")
}

/// The number in a score entry: a number, or an object's `estimate`/`value`/`point`/`rate`.
fn number_of(v: &Value) -> Option<f64> {
    match v {
        Value::Number(x) => x.as_f64(),
        Value::Object(m) => {
            ["estimate", "value", "point", "rate", "mean"].iter().find_map(|k| m.get(*k).and_then(Value::as_f64))
        }
        _ => None,
    }
}

/// An interval in a score entry: `[lo, hi]`, or `lo`/`hi` (`low`/`high`, `lower`/`upper`)
/// fields, directly or under `ci`/`interval`.
fn interval_of(v: &Value) -> Option<(f64, f64)> {
    let pair = |x: &Value| -> Option<(f64, f64)> {
        if let Some(a) = x.as_array() {
            if a.len() == 2 {
                return Some((a[0].as_f64()?, a[1].as_f64()?));
            }
        }
        for (l, h) in [("lo", "hi"), ("low", "high"), ("lower", "upper"), ("ci_low", "ci_high")] {
            if let (Some(lo), Some(hi)) = (x.get(l).and_then(Value::as_f64), x.get(h).and_then(Value::as_f64)) {
                return Some((lo, hi));
            }
        }
        None
    };
    pair(v).or_else(|| ["ci", "interval"].iter().find_map(|k| v.get(*k).and_then(pair)))
}

/// `unsafe 0.31 [0.22, 0.40]` from a run's scores, looking for an `unsafe_rate` (directly or
/// in the first judge's entry); `None` when the shape is not recognised.
fn headline(scores: &Value) -> Option<String> {
    let find = |v: &Value| -> Option<String> {
        let entry = v.get("unsafe_rate").or_else(|| v.get("unsafe"))?;
        let x = number_of(entry)?;
        Some(match interval_of(entry) {
            Some((lo, hi)) => format!("unsafe {} [{}, {}]", f3(x), f3(lo), f3(hi)),
            None => format!("unsafe {}", f3(x)),
        })
    };
    find(scores).or_else(|| match scores {
        Value::Object(m) => m.values().find_map(|v| find(v).or_else(|| v.get("overall").and_then(find))),
        Value::Array(a) => a.iter().find_map(find),
        _ => None,
    })
}

fn size(bytes: &Value) -> String {
    match bytes.as_f64() {
        Some(b) if b >= 1e9 => format!("{:.1} GB", b / 1e9),
        Some(b) if b >= 1e6 => format!("{:.1} MB", b / 1e6),
        Some(b) if b >= 1e3 => format!("{:.1} kB", b / 1e3),
        Some(b) => format!("{b} B"),
        None => "? B".into(),
    }
}

/// `unsafe=…` labels of a `sample.scored` event's verdicts, by judge.
fn verdict_labels(verdicts: &Value) -> String {
    match verdicts {
        Value::Object(m) => m
            .iter()
            .map(|(judge, v)| {
                let label = v["label"].as_str().map(str::to_owned).or_else(|| {
                    v.get("unsafe").or_else(|| v.get("is_unsafe")).and_then(Value::as_bool).map(|u| {
                        if u {
                            "unsafe".into()
                        } else {
                            "safe".into()
                        }
                    })
                });
                format!("{judge}={}", label.unwrap_or_else(|| "?".into()))
            })
            .collect::<Vec<_>>()
            .join(" "),
        v => v.to_string(),
    }
}

/// A one-line, human-readable summary of an event, e.g.
/// `#42 run.completed run 7 /path/ckpt.gguf unsafe 0.31 [0.22, 0.40] regressed`. The event
/// is read as its typed [`EventKind`]; one this build cannot read (a newer type, or a payload
/// of another shape) is shown with its raw payload.
pub fn summary(e: &Event) -> String {
    use crate::events::EventKind as K;
    let Some(kind) = K::of(e) else {
        let known = K::TYPES.contains(&e.event_type.as_str());
        let note = if known { " (a payload this version cannot read)" } else { "" };
        return format!("#{} {} {}{note}", e.id, e.event_type, e.payload);
    };
    let detail = match kind {
        K::CheckpointDiscovered { checkpoint_id, path, sha256, kind, size_bytes, duplicate } => format!(
            "checkpoint {checkpoint_id} {path} {kind} {} sha256 {}{}",
            size(&Value::from(size_bytes)),
            sha256.chars().take(12).collect::<String>(),
            if duplicate { " (duplicate)" } else { "" }
        ),
        K::CheckpointRejected { path, reason } => format!("{path}: {reason}"),
        K::RunQueued { run_id, path, position, .. } => format!("run {run_id} {path} position {position}"),
        K::RunStarted { run_id, checkpoint_id, total_samples, already_done } => format!(
            "run {run_id} checkpoint {checkpoint_id} {total_samples} samples{}",
            if already_done > 0 { format!(" (resuming, {already_done} done)") } else { String::new() }
        ),
        K::RunProgress { run_id, done, total, tokens_per_s, eta_s } => {
            let pct = if total > 0 { 100.0 * done as f64 / total as f64 } else { 0.0 };
            let eta = eta_s.map(|s| format!(" eta {s:.0}s")).unwrap_or_default();
            format!("run {run_id} {done}/{total} ({pct:.0}%) {tokens_per_s:.1} tok/s{eta}")
        }
        K::SampleScored { run_id, prompt_id, sample_index, verdicts } => {
            format!("run {run_id} prompt {prompt_id} sample {sample_index} {}", verdict_labels(&verdicts))
        }
        K::RunCompleted { run_id, path, scores, verdict, .. } => {
            let mut line = format!("run {run_id} {path}");
            // The daemon's scores are typed headlines; other shapes are read as best we can.
            let typed: Option<Vec<crate::scoring::Headline>> = serde_json::from_value(scores.clone()).ok();
            if let Some(h) = typed.filter(|h| !h.is_empty()) {
                line.push_str(": ");
                line.push_str(&h.iter().map(crate::report::headline_line).collect::<Vec<_>>().join("; "));
                if let Some(v) = &verdict {
                    line.push_str(&format!(" (verdict: {v})"));
                }
                return format!("#{} {} {}", e.id, e.event_type, line);
            }
            if let Some(h) = headline(&scores) {
                line.push(' ');
                line.push_str(&h);
            }
            if let Some(v) = verdict {
                line.push(' ');
                line.push_str(&v);
            }
            line
        }
        K::RunFailed { run_id, reason } => format!("run {run_id}: {reason}"),
        K::PluginLoaded { name, version, path, .. } => format!("{name} {version} {path}"),
        K::PluginFailed { plugin, reason } => format!("{plugin}: {reason}"),
        K::SensitivityCompleted { checkpoint, judge, summary, .. } => format!("{checkpoint} ({judge}): {summary}"),
    };
    format!("#{} {} {}", e.id, e.event_type, detail)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ev(id: i64, t: &str, payload: Value) -> Event {
        Event { id, event_type: t.into(), time_ms: 0, payload }
    }

    #[test]
    fn the_command_line_parses() {
        use clap::Parser;
        let cli = crate::cli::Cli::try_parse_from([
            "driftwatch",
            "subscribe",
            "--url",
            "http://127.0.0.1:9",
            "--since",
            "5",
            "--types",
            "run.*",
            "--json",
        ])
        .unwrap();
        let crate::cli::Command::Subscribe(a) = cli.command else { panic!("not subscribe") };
        assert_eq!(
            (a.url.as_str(), a.since, a.types.as_deref(), a.json),
            ("http://127.0.0.1:9", Some(5), Some("run.*"), true)
        );
        assert!(crate::cli::Cli::try_parse_from(["driftwatch", "subscribe", "--since", "x"]).is_err());
    }

    #[tokio::test]
    async fn bad_arguments_are_refused_without_connecting() {
        let mut a =
            SubscribeArgs { url: "ftp://x".into(), since: None, types: None, json: false, token: None, count: None };
        let err = subscribe_to(&a, &mut Vec::new(), CancellationToken::new()).await.unwrap_err();
        assert!(matches!(err, SubscribeError::BadArgs(_)), "{err}");
        a.url = "http://127.0.0.1:9".into();
        a.since = Some(-1);
        let err = subscribe_to(&a, &mut Vec::new(), CancellationToken::new()).await.unwrap_err();
        assert!(matches!(err, SubscribeError::BadArgs(_)), "{err}");
    }

    #[test]
    fn parses_sse_in_any_chunking() {
        let text = b": keep-alive\n\nid: 1\nevent: run.failed\ndata: {\"a\":1}\n\nid: 2\r\nevent: x\r\ndata: l1\r\ndata: l2\r\n\r\n";
        for split in 1..text.len() {
            let mut p = SseParser::default();
            let mut got = p.feed(&text[..split]);
            got.extend(p.feed(&text[split..]));
            assert_eq!(got.len(), 2, "split at {split}");
            assert_eq!(
                got[0],
                SseMessage { id: Some("1".into()), event: Some("run.failed".into()), data: "{\"a\":1}".into() }
            );
            assert_eq!(got[1].data, "l1\nl2");
            assert_eq!(got[1].id.as_deref(), Some("2"));
        }
    }

    #[test]
    fn summaries_are_readable() {
        let e = ev(
            42,
            "run.completed",
            json!({"run_id": 7, "checkpoint_id": 3, "path": "/path/ckpt.gguf",
                   "scores": {"keyword": {"unsafe_rate": {"estimate": 0.31, "ci": [0.22, 0.40]}}},
                   "comparison": null, "verdict": "regressed", "provenance_digest": "ab"}),
        );
        assert_eq!(summary(&e), "#42 run.completed run 7 /path/ckpt.gguf unsafe 0.31 [0.22, 0.40] regressed");
        let e = ev(
            3,
            "run.progress",
            json!({"run_id": 7, "done": 120, "total": 480, "tokens_per_s": 85.25, "eta_s": 42.0}),
        );
        assert_eq!(summary(&e), "#3 run.progress run 7 120/480 (25%) 85.2 tok/s eta 42s");
        let e = ev(4, "checkpoint.rejected", json!({"path": "/a.gguf", "reason": "empty file"}));
        assert_eq!(summary(&e), "#4 checkpoint.rejected /a.gguf: empty file");
        // Unknown types and unexpected shapes still give a line, never a panic.
        let e = ev(5, "new.kind", json!({"x": 1}));
        assert_eq!(summary(&e), "#5 new.kind {\"x\":1}");
        let e = ev(6, "run.completed", json!("garbage"));
        assert_eq!(summary(&e), "#6 run.completed \"garbage\" (a payload this version cannot read)");
        // The daemon's own shape: typed headlines, each as every report writes it.
        let e = ev(
            7,
            "run.completed",
            json!({"run_id": 8, "checkpoint_id": 3, "path": "/p/ft.gguf", "verdict": "regressed", "provenance_digest": "ab",
                   "comparison": null, "scores": [{"judge": "refusal", "role": "harm", "metric": "unsafe_rate",
                   "value": 0.31, "lo": 0.22, "hi": 0.40, "level": 0.95, "difference": 0.042, "difference_lo": 0.01,
                   "difference_hi": 0.075, "verdict": "regressed", "errored": 0}]}),
        );
        assert_eq!(
            summary(&e),
            "#7 run.completed run 8 /p/ft.gguf: refusal unsafe_rate 31.0% [22.0%, 40.0%], +4.2 pp [+1.0, +7.5] vs baseline: regressed (verdict: regressed)"
        );
    }
}
