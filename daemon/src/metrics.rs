//! Process metrics the daemon updates as it works, rendered at `GET /metrics` in the
//! Prometheus text exposition format (version 0.0.4).
//!
//! Counters and gauges are atomics; the per-plugin families sit behind a short mutex. Nothing
//! here blocks for long or allocates on the hot paths beyond a map entry per new label.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use parking_lot::Mutex;

/// Upper bounds (seconds) of the judge-call latency histogram buckets (`+Inf` is implied).
pub const JUDGE_CALL_BUCKETS: [f64; 14] =
    [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

#[derive(Debug, Clone, Default)]
struct Histogram {
    /// Non-cumulative counts per bucket; the last entry is `+Inf`.
    counts: [u64; JUDGE_CALL_BUCKETS.len() + 1],
    sum: f64,
    count: u64,
}

impl Histogram {
    fn observe(&mut self, x: f64) {
        let i = JUDGE_CALL_BUCKETS.iter().position(|b| x <= *b).unwrap_or(JUDGE_CALL_BUCKETS.len());
        self.counts[i] += 1;
        self.sum += x;
        self.count += 1;
    }
}

/// The daemon's metrics. Share it in an `Arc`.
#[derive(Debug, Default)]
pub struct Metrics {
    runs_finished: Mutex<BTreeMap<String, u64>>,
    samples_generated: AtomicU64,
    decode_tokens_per_s: AtomicU64, // f64 bits
    queue_length: AtomicU64,
    judge_calls: Mutex<BTreeMap<String, Histogram>>,
    plugin_errors: Mutex<BTreeMap<String, u64>>,
    events_published: AtomicU64,
    stream_subscribers: AtomicI64,
    stream_lags: AtomicU64,
}

impl Metrics {
    /// Fresh metrics, all zero.
    pub fn new() -> Metrics {
        Metrics::default()
    }

    /// A run ended; `outcome` is e.g. `completed`, `failed` or `cancelled`.
    pub fn run_finished(&self, outcome: &str) {
        *self.runs_finished.lock().entry(outcome.to_string()).or_insert(0) += 1;
    }

    /// `n` more samples were generated.
    pub fn samples_generated(&self, n: u64) {
        self.samples_generated.fetch_add(n, Ordering::Relaxed);
    }

    /// The current decode speed (tokens per second). Non-finite values are stored as 0.
    pub fn set_decode_tokens_per_s(&self, x: f64) {
        let x = if x.is_finite() { x } else { 0.0 };
        self.decode_tokens_per_s.store(x.to_bits(), Ordering::Relaxed);
    }

    /// Runs waiting in the queue.
    pub fn set_queue_length(&self, n: u64) {
        self.queue_length.store(n, Ordering::Relaxed);
    }

    /// One judge call of `plugin` took `seconds` (negative or non-finite values are ignored).
    pub fn observe_judge_call(&self, plugin: &str, seconds: f64) {
        if !(seconds.is_finite() && seconds >= 0.0) {
            return;
        }
        self.judge_calls.lock().entry(plugin.to_string()).or_default().observe(seconds);
    }

    /// A judge plugin call failed (trap, timeout, bad output, …).
    pub fn plugin_error(&self, plugin: &str) {
        *self.plugin_errors.lock().entry(plugin.to_string()).or_insert(0) += 1;
    }

    /// An event was published.
    pub fn events_published(&self) {
        self.events_published.fetch_add(1, Ordering::Relaxed);
    }

    /// An event stream (SSE or WebSocket) was opened.
    pub fn stream_opened(&self) {
        self.stream_subscribers.fetch_add(1, Ordering::Relaxed);
    }

    /// An event stream was closed.
    pub fn stream_closed(&self) {
        self.stream_subscribers.fetch_sub(1, Ordering::Relaxed);
    }

    /// An event stream fell behind the live broadcast and caught up from the store.
    pub fn stream_lagged(&self) {
        self.stream_lags.fetch_add(1, Ordering::Relaxed);
    }

    /// Catch-ups from the store so far.
    pub fn stream_lags(&self) -> u64 {
        self.stream_lags.load(Ordering::Relaxed)
    }

    /// Open event streams now.
    pub fn stream_subscribers(&self) -> i64 {
        self.stream_subscribers.load(Ordering::Relaxed)
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        let o = &mut out;
        family(o, "driftwatch_runs_finished_total", "counter", "Runs that ended, by outcome.");
        for (outcome, n) in self.runs_finished.lock().iter() {
            let _ = writeln!(o, "driftwatch_runs_finished_total{{outcome=\"{}\"}} {n}", escape(outcome));
        }
        family(o, "driftwatch_samples_generated_total", "counter", "Samples generated.");
        let _ = writeln!(o, "driftwatch_samples_generated_total {}", self.samples_generated.load(Ordering::Relaxed));
        family(o, "driftwatch_decode_tokens_per_second", "gauge", "Recent decode speed of the engine.");
        let tps = f64::from_bits(self.decode_tokens_per_s.load(Ordering::Relaxed));
        let _ = writeln!(o, "driftwatch_decode_tokens_per_second {}", num(tps));
        family(o, "driftwatch_queue_length", "gauge", "Runs waiting in the queue.");
        let _ = writeln!(o, "driftwatch_queue_length {}", self.queue_length.load(Ordering::Relaxed));
        family(o, "driftwatch_judge_call_duration_seconds", "histogram", "Duration of judge plugin calls.");
        for (plugin, h) in self.judge_calls.lock().iter() {
            let p = escape(plugin);
            let mut cumulative = 0;
            for (i, b) in JUDGE_CALL_BUCKETS.iter().enumerate() {
                cumulative += h.counts[i];
                let _ = writeln!(
                    o,
                    "driftwatch_judge_call_duration_seconds_bucket{{plugin=\"{p}\",le=\"{}\"}} {cumulative}",
                    num(*b)
                );
            }
            cumulative += h.counts[JUDGE_CALL_BUCKETS.len()];
            let _ =
                writeln!(o, "driftwatch_judge_call_duration_seconds_bucket{{plugin=\"{p}\",le=\"+Inf\"}} {cumulative}");
            let _ = writeln!(o, "driftwatch_judge_call_duration_seconds_sum{{plugin=\"{p}\"}} {}", num(h.sum));
            let _ = writeln!(o, "driftwatch_judge_call_duration_seconds_count{{plugin=\"{p}\"}} {}", h.count);
        }
        family(o, "driftwatch_plugin_errors_total", "counter", "Failed judge plugin calls, by plugin.");
        for (plugin, n) in self.plugin_errors.lock().iter() {
            let _ = writeln!(o, "driftwatch_plugin_errors_total{{plugin=\"{}\"}} {n}", escape(plugin));
        }
        family(o, "driftwatch_events_published_total", "counter", "Events published.");
        let _ = writeln!(o, "driftwatch_events_published_total {}", self.events_published.load(Ordering::Relaxed));
        family(o, "driftwatch_event_stream_subscribers", "gauge", "Open SSE and WebSocket event streams.");
        let _ = writeln!(o, "driftwatch_event_stream_subscribers {}", self.stream_subscribers().max(0));
        family(
            o,
            "driftwatch_event_stream_lags_total",
            "counter",
            "Times an event stream fell behind the live broadcast and caught up from the store.",
        );
        let _ = writeln!(o, "driftwatch_event_stream_lags_total {}", self.stream_lags());
        out
    }
}

fn family(o: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(o, "# HELP {name} {help}");
    let _ = writeln!(o, "# TYPE {name} {kind}");
}

/// A label value with `\`, `"` and newlines escaped.
fn escape(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

/// A sample value as Prometheus writes it.
fn num(x: f64) -> String {
    if x.is_nan() {
        "NaN".into()
    } else if x.is_infinite() {
        if x > 0.0 {
            "+Inf".into()
        } else {
            "-Inf".into()
        }
    } else {
        format!("{x}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_text_exposition_format() {
        let m = Metrics::new();
        m.run_finished("completed");
        m.run_finished("completed");
        m.run_finished("failed");
        m.samples_generated(40);
        m.samples_generated(2);
        m.set_decode_tokens_per_s(123.5);
        m.set_queue_length(3);
        m.observe_judge_call("keyword", 0.003);
        m.observe_judge_call("keyword", 0.2);
        m.observe_judge_call("keyword", 99.0);
        m.observe_judge_call("keyword", f64::NAN);
        m.plugin_error("we\"ird\\name\n");
        m.events_published();
        let t = m.render();
        assert!(t.contains("# HELP driftwatch_runs_finished_total "));
        assert!(t.contains("# TYPE driftwatch_runs_finished_total counter\n"));
        assert!(t.contains("driftwatch_runs_finished_total{outcome=\"completed\"} 2\n"));
        assert!(t.contains("driftwatch_runs_finished_total{outcome=\"failed\"} 1\n"));
        assert!(t.contains("driftwatch_samples_generated_total 42\n"));
        assert!(t.contains("driftwatch_decode_tokens_per_second 123.5\n"));
        assert!(t.contains("driftwatch_queue_length 3\n"));
        assert!(t.contains("# TYPE driftwatch_judge_call_duration_seconds histogram\n"));
        assert!(t.contains("driftwatch_judge_call_duration_seconds_bucket{plugin=\"keyword\",le=\"0.001\"} 0\n"));
        assert!(t.contains("driftwatch_judge_call_duration_seconds_bucket{plugin=\"keyword\",le=\"0.005\"} 1\n"));
        assert!(t.contains("driftwatch_judge_call_duration_seconds_bucket{plugin=\"keyword\",le=\"0.25\"} 2\n"));
        assert!(t.contains("driftwatch_judge_call_duration_seconds_bucket{plugin=\"keyword\",le=\"30\"} 2\n"));
        assert!(t.contains("driftwatch_judge_call_duration_seconds_bucket{plugin=\"keyword\",le=\"+Inf\"} 3\n"));
        assert!(t.contains("driftwatch_judge_call_duration_seconds_sum{plugin=\"keyword\"} 99.203\n"));
        assert!(t.contains("driftwatch_judge_call_duration_seconds_count{plugin=\"keyword\"} 3\n"));
        assert!(t.contains("driftwatch_plugin_errors_total{plugin=\"we\\\"ird\\\\name\\n\"} 1\n"));
        assert!(t.contains("driftwatch_events_published_total 1\n"));
        // Every sample line belongs to a family declared above it, and every line is well formed.
        let mut declared = Vec::new();
        for line in t.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                declared.push(rest.split(' ').next().unwrap().to_string());
                continue;
            }
            if line.starts_with("# HELP ") {
                continue;
            }
            let name = line.split(['{', ' ']).next().unwrap();
            assert!(
                declared.iter().any(|d| name == d
                    || name.strip_prefix(d.as_str()).is_some_and(|s| ["_bucket", "_sum", "_count"].contains(&s))),
                "undeclared sample {line:?}"
            );
            let value = line.rsplit(' ').next().unwrap();
            assert!(value.parse::<f64>().is_ok() || value == "+Inf", "bad value in {line:?}");
        }
    }

    #[test]
    fn buckets_are_cumulative_and_monotonic() {
        let m = Metrics::new();
        for i in 0..100 {
            m.observe_judge_call("p", i as f64 / 10.0);
        }
        let t = m.render();
        let counts: Vec<u64> = t
            .lines()
            .filter(|l| l.starts_with("driftwatch_judge_call_duration_seconds_bucket"))
            .map(|l| l.rsplit(' ').next().unwrap().parse().unwrap())
            .collect();
        assert_eq!(counts.len(), JUDGE_CALL_BUCKETS.len() + 1);
        assert!(counts.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(*counts.last().unwrap(), 100);
        // 0.0 .. 1.0 inclusive: 11 observations at or below 1 second.
        assert!(t.contains("le=\"1\"} 11\n"));
    }
}
