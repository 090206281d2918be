//! [`ConfigBuilder`]: the driftwatch configuration files the integration tests run with.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// One `[[suites]]` entry.
#[derive(Debug, Clone)]
pub struct Suite {
    name: String,
    path: PathBuf,
    limit: Option<usize>,
    fields: Option<(String, String)>,
    per_category: Option<usize>,
}

impl Suite {
    /// A suite read whole from `path` (its format from the extension).
    pub fn new(name: &str, path: impl Into<PathBuf>) -> Suite {
        Suite { name: name.into(), path: path.into(), limit: None, fields: None, per_category: None }
    }

    /// `limit`: the first `n` prompts.
    pub fn limit(mut self, n: usize) -> Suite {
        self.limit = Some(n);
        self
    }

    /// `id_field` and `category_field` of a CSV or JSONL suite.
    pub fn fields(mut self, id: &str, category: &str) -> Suite {
        self.fields = Some((id.into(), category.into()));
        self
    }

    /// `per_category`: at most `n` prompts of each category.
    pub fn per_category(mut self, n: usize) -> Suite {
        self.per_category = Some(n);
        self
    }
}

/// A driftwatch configuration file for a test. It holds only the keys a test sets (every
/// other key keeps driftwatch's default), plus `engine.threads = 2` (llama.cpp's threads spin,
/// and the test machines have two cores) and `api.enabled = false` unless [`api`] is called.
///
/// [`api`]: ConfigBuilder::api
#[derive(Debug, Clone)]
pub struct ConfigBuilder {
    data_dir: PathBuf,
    base: PathBuf,
    watch: Vec<PathBuf>,
    settle_ms: Option<u64>,
    log_level: Option<String>,
    parallel: Option<u32>,
    batch_size: Option<u32>,
    samples: Option<u32>,
    seed: Option<u64>,
    temperature: Option<f32>,
    plain: bool,
    max_tokens: Option<u32>,
    adaptive: Option<(u32, u32, f64)>,
    repeats: Option<u32>,
    early_stop_looks: Option<u32>,
    suites: Vec<Suite>,
    judges: Vec<(String, PathBuf)>,
    /// `calibration` of a judge, by its name.
    calibrations: Vec<(String, PathBuf)>,
    plugins_dir: Option<PathBuf>,
    sample_scored: bool,
    listen: Option<u16>,
    evaluate_roots: Vec<PathBuf>,
    /// `[[api.webhooks]]`: URL and `max_retry_delay_s`.
    webhooks: Vec<(String, u64)>,
    bootstrap: Option<u32>,
    /// `engine.backend = "openai"` with these endpoints (URL, max_concurrency).
    endpoints: Vec<(String, u32)>,
    /// `[engine.served]` entries (key, TOML value).
    served: Vec<(String, String)>,
    /// `engine.max_attempts`.
    max_attempts: Option<u32>,
}

impl ConfigBuilder {
    /// A configuration storing in `data_dir` and evaluating the base model `base`.
    pub fn new(data_dir: impl Into<PathBuf>, base: impl Into<PathBuf>) -> ConfigBuilder {
        ConfigBuilder {
            data_dir: data_dir.into(),
            base: base.into(),
            watch: Vec::new(),
            settle_ms: None,
            log_level: None,
            parallel: None,
            batch_size: None,
            samples: None,
            seed: None,
            temperature: None,
            plain: false,
            max_tokens: None,
            adaptive: None,
            repeats: None,
            early_stop_looks: None,
            suites: Vec::new(),
            judges: Vec::new(),
            calibrations: Vec::new(),
            plugins_dir: None,
            sample_scored: false,
            listen: None,
            evaluate_roots: Vec::new(),
            webhooks: Vec::new(),
            bootstrap: None,
            endpoints: Vec::new(),
            served: Vec::new(),
            max_attempts: None,
        }
    }

    /// `daemon.watch`: adds a watched folder.
    pub fn watch(mut self, dir: impl Into<PathBuf>) -> Self {
        self.watch.push(dir.into());
        self
    }

    /// `daemon.settle_ms`.
    pub fn settle_ms(mut self, ms: u64) -> Self {
        self.settle_ms = Some(ms);
        self
    }

    /// `daemon.log_level`.
    pub fn log_level(mut self, level: &str) -> Self {
        self.log_level = Some(level.into());
        self
    }

    /// `engine.parallel`.
    pub fn parallel(mut self, n: u32) -> Self {
        self.parallel = Some(n);
        self
    }

    /// `engine.batch_size`.
    pub fn batch_size(mut self, n: u32) -> Self {
        self.batch_size = Some(n);
        self
    }

    /// `sampling.samples` (K).
    pub fn samples(mut self, k: u32) -> Self {
        self.samples = Some(k);
        self
    }

    /// `sampling.seed`.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// `sampling.temperature`.
    pub fn temperature(mut self, t: f32) -> Self {
        self.temperature = Some(t);
        self
    }

    /// Sampling from the model's whole distribution: `temperature = 1.0` (unless set), no
    /// top-k, top-p or min-p cut-off.
    pub fn plain_sampling(mut self) -> Self {
        self.plain = true;
        self.temperature = self.temperature.or(Some(1.0));
        self
    }

    /// `sampling.max_tokens`.
    pub fn max_tokens(mut self, n: u32) -> Self {
        self.max_tokens = Some(n);
        self
    }

    /// Adaptive sampling: `sampling.min_samples`, `max_samples` and `target_half_width`.
    pub fn adaptive(mut self, min_samples: u32, max_samples: u32, target_half_width: f64) -> Self {
        self.adaptive = Some((min_samples, max_samples, target_half_width));
        self
    }

    /// `sampling.repeats`.
    pub fn repeats(mut self, r: u32) -> Self {
        self.repeats = Some(r);
        self
    }

    /// Adds a `[[suites]]` entry read whole from `path`.
    pub fn suite(self, name: &str, path: impl Into<PathBuf>) -> Self {
        self.add_suite(Suite::new(name, path))
    }

    /// Adds a `[[suites]]` entry.
    pub fn add_suite(mut self, suite: Suite) -> Self {
        self.suites.push(suite);
        self
    }

    /// `sampling.early_stop` with `looks` looks (the other keys at their defaults).
    pub fn early_stop(mut self, looks: u32) -> Self {
        self.early_stop_looks = Some(looks);
        self
    }

    /// Adds a `[[judges]]` entry: `plugin` is a `.wasm` path or a plugin's name.
    pub fn judge(mut self, name: &str, plugin: impl Into<PathBuf>) -> Self {
        self.judges.push((name.into(), plugin.into()));
        self
    }

    /// `calibration` of the judge `name` (added with [`ConfigBuilder::judge`]).
    pub fn calibration(mut self, name: &str, file: impl Into<PathBuf>) -> Self {
        self.calibrations.push((name.into(), file.into()));
        self
    }

    /// `plugins.dir`: the hot-reloaded plugin folder.
    pub fn plugins_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.plugins_dir = Some(dir.into());
        self
    }

    /// `events.sample_scored = true`.
    pub fn sample_scored_events(mut self) -> Self {
        self.sample_scored = true;
        self
    }

    /// The API enabled on `127.0.0.1:port`.
    pub fn api(mut self, port: u16) -> Self {
        self.listen = Some(port);
        self
    }

    /// `api.evaluate_roots`: adds a folder `POST /v1/evaluate` may read from.
    pub fn evaluate_root(mut self, dir: impl Into<PathBuf>) -> Self {
        self.evaluate_roots.push(dir.into());
        self
    }

    /// `[[api.webhooks]]`: every event POSTed to `url`, retried at most `max_retry_delay_s`
    /// apart.
    pub fn webhook(mut self, url: &str, max_retry_delay_s: u64) -> Self {
        self.webhooks.push((url.to_owned(), max_retry_delay_s));
        self
    }

    /// `stats.bootstrap`.
    pub fn bootstrap(mut self, resamples: u32) -> Self {
        self.bootstrap = Some(resamples);
        self
    }

    /// `engine.backend = "openai"`: generates on these OpenAI-compatible servers, each with
    /// its `max_concurrency`.
    pub fn openai(mut self, endpoints: &[(&str, u32)]) -> Self {
        self.endpoints = endpoints.iter().map(|(u, c)| (u.to_string(), *c)).collect();
        self
    }

    /// `[engine.served]`: `key = value` (`value` as TOML, e.g. `"ft-a"` or `{ lora = 0 }`).
    pub fn served(mut self, key: &str, value: &str) -> Self {
        self.served.push((key.into(), value.into()));
        self
    }

    /// `engine.max_attempts`: attempts per sample on one endpoint.
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = Some(n);
        self
    }

    /// The configuration file's text.
    pub fn toml(&self) -> String {
        let path = |p: &Path| format!("\"{}\"", p.display());
        let paths = |ps: &[PathBuf]| format!("[{}]", ps.iter().map(|p| path(p)).collect::<Vec<_>>().join(", "));
        let mut t = String::new();
        let key = |t: &mut String, k: &str, v: Option<String>| {
            if let Some(v) = v {
                writeln!(t, "{k} = {v}").unwrap();
            }
        };
        t.push_str("[daemon]\n");
        key(&mut t, "data_dir", Some(path(&self.data_dir)));
        key(&mut t, "watch", (!self.watch.is_empty()).then(|| paths(&self.watch)));
        key(&mut t, "settle_ms", self.settle_ms.map(|v| v.to_string()));
        key(&mut t, "log_level", self.log_level.as_ref().map(|v| format!("\"{v}\"")));
        t.push_str("\n[model]\n");
        key(&mut t, "base", Some(path(&self.base)));
        t.push_str("\n[engine]\nthreads = 2\n");
        key(&mut t, "parallel", self.parallel.map(|v| v.to_string()));
        key(&mut t, "batch_size", self.batch_size.map(|v| v.to_string()));
        if !self.endpoints.is_empty() {
            t.push_str("backend = \"openai\"\n");
            key(&mut t, "max_attempts", self.max_attempts.map(|v| v.to_string()));
            let list: Vec<String> =
                self.endpoints.iter().map(|(u, c)| format!("{{ url = \"{u}\", max_concurrency = {c} }}")).collect();
            writeln!(t, "endpoints = [{}]", list.join(", ")).unwrap();
            if !self.served.is_empty() {
                let entries: Vec<String> = self.served.iter().map(|(k, v)| format!("\"{k}\" = {v}")).collect();
                writeln!(t, "served = {{ {} }}", entries.join(", ")).unwrap();
            }
        }
        t.push_str("\n[sampling]\n");
        key(&mut t, "samples", self.samples.map(|v| v.to_string()));
        key(&mut t, "seed", self.seed.map(|v| v.to_string()));
        key(&mut t, "temperature", self.temperature.map(|v| format!("{v:?}")));
        if self.plain {
            t.push_str("top_k = 0\ntop_p = 1.0\nmin_p = 0.0\n");
        }
        key(&mut t, "max_tokens", self.max_tokens.map(|v| v.to_string()));
        if let Some((min, max, half_width)) = self.adaptive {
            writeln!(t, "min_samples = {min}\nmax_samples = {max}\ntarget_half_width = {half_width:?}").unwrap();
        }
        key(&mut t, "repeats", self.repeats.map(|v| v.to_string()));
        key(&mut t, "early_stop", self.early_stop_looks.map(|v| format!("{{ looks = {v} }}")));
        for s in &self.suites {
            writeln!(t, "\n[[suites]]\nname = \"{}\"\npath = {}", s.name, path(&s.path)).unwrap();
            key(&mut t, "limit", s.limit.map(|v| v.to_string()));
            if let Some((id, category)) = &s.fields {
                writeln!(t, "id_field = \"{id}\"\ncategory_field = \"{category}\"").unwrap();
            }
            key(&mut t, "per_category", s.per_category.map(|v| v.to_string()));
        }
        for (name, plugin) in &self.judges {
            writeln!(t, "\n[[judges]]\nname = \"{name}\"\nplugin = {}", path(plugin)).unwrap();
            for (_, file) in self.calibrations.iter().filter(|(n, _)| n == name) {
                writeln!(t, "calibration = {}", path(file)).unwrap();
            }
        }
        if let Some(dir) = &self.plugins_dir {
            writeln!(t, "\n[plugins]\ndir = {}", path(dir)).unwrap();
        }
        if self.sample_scored {
            t.push_str("\n[events]\nsample_scored = true\n");
        }
        match self.listen {
            Some(port) => writeln!(t, "\n[api]\nenabled = true\nlisten = \"127.0.0.1:{port}\"").unwrap(),
            None => t.push_str("\n[api]\nenabled = false\n"),
        }
        key(&mut t, "evaluate_roots", (!self.evaluate_roots.is_empty()).then(|| paths(&self.evaluate_roots)));
        for (url, delay) in &self.webhooks {
            writeln!(t, "\n[[api.webhooks]]\nurl = \"{url}\"\nmax_retry_delay_s = {delay}").unwrap();
        }
        if let Some(n) = self.bootstrap {
            writeln!(t, "\n[stats]\nbootstrap = {n}").unwrap();
        }
        t
    }

    /// Writes the file to `path`, and returns `path`.
    pub fn write(&self, path: impl Into<PathBuf>) -> PathBuf {
        let path = path.into();
        std::fs::write(&path, self.toml()).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
        path
    }
}
