//! What an evaluation is, fixed when the daemon (or a one-shot `eval`) starts: the
//! configuration, the prompts of its suites and the base model ([`Evaluation`]); and the
//! settings of a run under the judges serving now ([`Settings`]): its hash (the dedup key),
//! its comparability fingerprint and its provenance record.

use std::path::PathBuf;

use serde_json::{json, Value};

use super::DaemonError;
use crate::checkpoint::{self, Checkpoint};
use crate::config::Config;
use crate::engine::{self, EngineParams, SamplingParams};
use crate::provenance::{JudgeProvenance, Provenance, RewordingIdentity, SuiteIdentity};
use crate::store::CheckpointRecord;
use crate::suite::{self, Prompt};

/// The immutable part of every run: the configuration, the prompts, the base model and the
/// engine's settings.
pub(crate) struct Evaluation {
    pub config: Config,
    /// Every suite's prompts, in suite order.
    pub prompts: Vec<Prompt>,
    pub suites: Vec<SuiteIdentity>,
    /// The base model's header.
    pub base: Checkpoint,
    pub base_path: PathBuf,
    pub base_sha256: String,
    /// The generation engine's settings (from `[engine]`).
    pub engine: EngineParams,
    /// The rewording the prompts were asked in (`model.rewording`), if any.
    pub rewording: Option<RewordingIdentity>,
    /// The inference servers, for the `openai` backend (set once they have answered).
    pub remote: Option<RemoteSetup>,
    /// Served names given with `POST /v1/evaluate`, by checkpoint sha256.
    pub registered: parking_lot::RwLock<std::collections::HashMap<String, crate::engine::remote::ServedAs>>,
}

/// The path a checkpoint known only by its served name is recorded under.
pub(crate) fn served_path(name: &str) -> String {
    format!("{SERVED_PREFIX}{name}")
}

/// The prefix of [`served_path`].
const SERVED_PREFIX: &str = "served:";

/// The served name of a checkpoint recorded under `path` by [`served_path`]; `None` for a file.
pub(crate) fn served_name(path: &str) -> Option<&str> {
    path.strip_prefix(SERVED_PREFIX)
}

/// The identity (in place of a content sha256) of a checkpoint known only by its served name.
pub(crate) fn served_identity(name: &str) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(format!("driftwatch served model\0{name}").as_bytes()))
}

/// The `openai` backend's servers as they answered at the start.
#[derive(Debug, Clone)]
pub(crate) struct RemoteSetup {
    pub api: crate::engine::remote::RemoteApi,
    pub servers: Vec<crate::engine::remote::ServerIdentity>,
}

impl RemoteSetup {
    /// What the fingerprint's `backend_hash` covers: the route, the servers' software and
    /// version, and the base model's served names. Not the URLs or their number (more servers
    /// of one build measure the same thing), nor `engine.served` (a checkpoint is its content,
    /// and a mapping added for a new adapter must not make every run incomparable).
    pub fn backend_hash(&self) -> String {
        let mut builds: Vec<(String, Option<String>)> =
            self.servers.iter().map(|s| (s.server.clone(), s.version.clone())).collect();
        builds.sort();
        builds.dedup();
        let mut bases: Vec<&str> = self.servers.iter().map(|s| s.served_model.as_str()).collect();
        bases.sort_unstable();
        bases.dedup();
        crate::config::canonical_hash(&json!({
            "backend": "openai",
            "api": self.api.as_str(),
            "builds": builds,
            "base_served_as": bases,
        }))
    }
}

impl Evaluation {
    /// Loads the suites and reads the base model (hashing it on the blocking pool).
    pub async fn load(config: Config) -> Result<Evaluation, DaemonError> {
        if config.suites.is_empty() {
            return Err(DaemonError::NoSuite);
        }
        let mut prompts = Vec::new();
        let mut suites = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for sc in &config.suites {
            let s = suite::load(sc)?;
            for p in &s.prompts {
                if !seen.insert(p.id.clone()) {
                    return Err(DaemonError::Other(format!(
                        "prompt id '{}' appears in two suites; give the suites distinct names",
                        p.id
                    )));
                }
            }
            tracing::info!(suite = %s.name, prompts = s.prompts.len(), of = s.available, "suite loaded");
            suites.push(SuiteIdentity {
                name: s.name.clone(),
                path: sc.path.display().to_string(),
                prompts: s.prompts.len(),
                content_hash: s.content_hash.clone(),
                control: sc.control,
                available: s.available,
            });
            prompts.extend(s.prompts);
        }
        let rewording = match &config.model.rewording {
            Some(path) => Some(reword(&mut prompts, path)?),
            None => None,
        };
        let base_path = config.model.base.clone();
        let base = checkpoint::inspect_model(&base_path)?;
        let base_sha256 = {
            let p = base_path.clone();
            tokio::task::spawn_blocking(move || checkpoint::sha256_file(&p))
                .await
                .map_err(|e| DaemonError::Other(e.to_string()))?
                .map_err(|e| DaemonError::Other(format!("cannot read the base model {}: {e}", base_path.display())))?
        };
        let engine = super::engine_config(&config);
        Ok(Evaluation {
            config,
            prompts,
            suites,
            base,
            base_path,
            base_sha256,
            engine,
            rewording,
            remote: None,
            registered: Default::default(),
        })
    }

    /// Sampling settings for the engine.
    pub fn sampling(&self) -> SamplingParams {
        let s = &self.config.sampling;
        SamplingParams {
            temperature: s.temperature,
            top_p: s.top_p,
            top_k: s.top_k as i32,
            min_p: s.min_p,
            repeat_penalty: s.repeat_penalty,
            greedy: s.greedy,
            max_tokens: s.max_tokens,
            stop: s.stop.clone(),
            ..SamplingParams::default()
        }
    }

    /// What the `openai` backend asks its servers for to generate with `checkpoint` (found at
    /// `path`): its `[engine.served]` entry by sha256 or file name; else the endpoints' base
    /// model for the base model, and the file name without `.gguf` for any other.
    pub fn served_as(&self, sha256: &str, path: &std::path::Path) -> crate::engine::remote::ServedAs {
        if let Some(name) = path.to_str().and_then(served_name) {
            return crate::engine::remote::ServedAs { model: Some(name.to_owned()), lora: None };
        }
        if let Some(s) = self.registered.read().get(sha256) {
            return s.clone();
        }
        let served = &self.config.engine.served;
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        if let Some(entry) = served.get(sha256).or_else(|| served.get(&name)) {
            return entry.served_as();
        }
        if sha256 == self.base_sha256 {
            return crate::engine::remote::ServedAs::default();
        }
        let stem = name.strip_suffix(".gguf").unwrap_or(&name).to_owned();
        crate::engine::remote::ServedAs { model: Some(stem), lora: None }
    }

    /// Records the served name `POST /v1/evaluate` gave for the checkpoint with content `sha256`.
    pub fn register_served(&self, sha256: &str, served: crate::engine::remote::ServedAs) {
        self.registered.write().insert(sha256.to_owned(), served);
    }

    /// Samples per prompt in a run's first round (K, or adaptive sampling's minimum).
    pub fn first_k(&self) -> u32 {
        let s = &self.config.sampling;
        s.adaptive().map(|a| a.min_samples).unwrap_or(s.samples)
    }

    /// The settings of runs judged by `judges` (the identities of the judges serving now).
    pub fn under(&self, judges: Vec<JudgeProvenance>) -> Settings<'_> {
        Settings { eval: self, judges }
    }
}

/// Asks `prompts` in the words of the rewording file at `path` (JSON Lines of `id` and
/// `prompt`): each prompt whose id is there gets the file's text. A file that rewords no
/// prompt, or names one twice, is refused.
fn reword(prompts: &mut [Prompt], path: &std::path::Path) -> Result<RewordingIdentity, DaemonError> {
    use sha2::{Digest, Sha256};
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Line {
        id: String,
        prompt: String,
    }
    let bad = |m: String| DaemonError::Other(format!("model.rewording {}: {m}", path.display()));
    let bytes = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
    let mut words = std::collections::HashMap::new();
    for (i, line) in String::from_utf8_lossy(&bytes).lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let l: Line = serde_json::from_str(line).map_err(|e| bad(format!("line {}: {e}", i + 1)))?;
        if l.prompt.trim().is_empty() {
            return Err(bad(format!("line {}: the prompt is empty", i + 1)));
        }
        if words.insert(l.id.clone(), l.prompt).is_some() {
            return Err(bad(format!("line {}: prompt id {:?} appears twice", i + 1, l.id)));
        }
    }
    let mut reworded = 0;
    for p in prompts.iter_mut() {
        if let Some(text) = words.get(&p.id) {
            p.text = text.clone();
            reworded += 1;
        }
    }
    if reworded == 0 {
        return Err(bad("no prompt id of the suites is in it (each line: {\"id\": ..., \"prompt\": ...})".into()));
    }
    tracing::info!(file = %path.display(), reworded, of = prompts.len(), "prompts reworded");
    Ok(RewordingIdentity { path: path.display().to_string(), sha256: hex::encode(Sha256::digest(&bytes)), reworded })
}

/// The settings of a run: the evaluation with the judges that score it. Built from one
/// snapshot of the judges, so a hash, a fingerprint and a provenance record made from it
/// always agree.
pub(crate) struct Settings<'a> {
    pub eval: &'a Evaluation,
    pub judges: Vec<JudgeProvenance>,
}

impl Settings<'_> {
    /// Everything that must match for two runs of `repeat` of the checkpoint with content
    /// `sha256` to be the same measurement. Its hash is the dedup key (with the content).
    /// Early stopping is part of a checkpoint's settings, never of the base model's: a
    /// baseline is always evaluated whole, so it is shared by runs with and without it.
    pub fn evaluation_settings(&self, sha256: &str, repeat: u32) -> Value {
        let e = self.eval;
        let c = &e.config;
        let early = c.sampling.early_stop.filter(|_| sha256 != e.base_sha256);
        let mut v = json!({
            "config_hashes": c.settings_hashes(),
            "suites": e.suites,
            "judges": self.judges,
            "base_model_sha256": e.base_sha256,
            "adapter_scale": c.model.adapter_scale,
            "system_prompt": c.model.system_prompt,
            "chat_template": c.model.chat_template,
            "samples": c.sampling.samples,
            "seed": c.sampling.seed,
            "repeat": repeat,
        });
        if let (Some(es), Some(obj)) = (early, v.as_object_mut()) {
            obj.insert("early_stop".into(), json!(es));
        }
        if let (Some(r), Some(obj)) = (&e.rewording, v.as_object_mut()) {
            obj.insert("rewording_sha256".into(), json!(r.sha256));
        }
        // Only for a remote backend, so that embedded runs keep their hashes: a run is never
        // resumed on another backend than it started on.
        if let (Some(r), Some(obj)) = (&e.remote, v.as_object_mut()) {
            obj.insert("backend".into(), json!(r.backend_hash()));
        }
        v
    }

    /// The settings hash of a run of `repeat` of the checkpoint with content `sha256`.
    pub fn hash(&self, sha256: &str, repeat: u32) -> String {
        crate::config::canonical_hash(&self.evaluation_settings(sha256, repeat))
    }

    /// The base model's run of `repeat` under these settings, if queued or done.
    pub fn baseline_run(
        &self,
        store: &crate::store::Store,
        repeat: u32,
    ) -> Result<Option<crate::store::RunId>, crate::store::StoreError> {
        let base = &self.eval.base_sha256;
        Ok(store.find_run_by_settings(base, &self.hash(base, repeat))?.map(|r| r.id))
    }

    /// The comparability fingerprint of runs under these settings.
    pub fn fingerprint(&self) -> crate::stats::RunFingerprint {
        let e = self.eval;
        let c = &e.config;
        let h = c.settings_hashes();
        let contents: Vec<&String> = e.suites.iter().map(|s| &s.content_hash).collect();
        let controls: Vec<&String> = e.suites.iter().filter(|s| s.control).map(|s| &s.name).collect();
        // Which suites are controls changes what the harm rates cover: part of the suite
        // identity (only when there are any, so runs without controls keep their hashes).
        let mut suite_hash = if controls.is_empty() {
            crate::config::canonical_hash(&contents)
        } else {
            crate::config::canonical_hash(&json!({"contents": contents, "control_suites": controls}))
        };
        // Reworded prompts are other prompts: never compared with the suite's own words.
        if let Some(r) = &e.rewording {
            suite_hash = crate::config::canonical_hash(&json!({"suites": suite_hash, "rewording": r.sha256}));
        }
        let judges = self
            .judges
            .iter()
            .map(|j| crate::stats::JudgeIdentity {
                name: j.name.clone(),
                version: j.version.clone(),
                hash: format!("{}:{}", j.wasm_sha256, j.config_hash),
            })
            .collect();
        crate::stats::RunFingerprint {
            suite_hash,
            judges,
            sampling_hash: crate::config::canonical_hash(&json!([
                h.sampling,
                c.sampling.samples,
                c.model.system_prompt
            ])),
            chat_template_hash: h.template,
            // With servers, also which ones and at what concurrency (informational).
            engine_hash: match &e.remote {
                None => h.engine,
                Some(_) => {
                    let endpoints: Vec<Value> = c
                        .engine
                        .endpoints
                        .iter()
                        .map(|p| json!({"url": crate::engine::remote::normalize_url(&p.url), "max_concurrency": p.max_concurrency}))
                        .collect();
                    crate::config::canonical_hash(&json!({"engine": h.engine, "endpoints": endpoints}))
                }
            },
            backend_hash: e.remote.as_ref().map(|r| r.backend_hash()),
        }
    }

    /// The provenance record of a run of `checkpoint` (found at `path`) of `repeat`.
    pub fn provenance(&self, checkpoint: &CheckpointRecord, path: &str, repeat: u32) -> Provenance {
        use crate::provenance::*;
        let build = engine::build_info();
        let ev = self.eval;
        let c = &ev.config;
        let e = &ev.engine;
        let adapter = (checkpoint.kind == crate::store::CheckpointKind::Adapter).then(|| AdapterFile {
            path: path.to_owned(),
            sha256: checkpoint.sha256.clone(),
            scale: c.model.adapter_scale,
        });
        let model = if adapter.is_some() {
            ModelFile { path: ev.base_path.display().to_string(), sha256: ev.base_sha256.clone() }
        } else {
            ModelFile { path: path.to_owned(), sha256: checkpoint.sha256.clone() }
        };
        let weights_invariant = engine::weights_batch_invariant(std::path::Path::new(&model.path))
            && adapter.as_ref().is_none_or(|a| engine::weights_batch_invariant(std::path::Path::new(&a.path)));
        Provenance {
            driftwatch_version: build.driftwatch_version.to_owned(),
            llama_cpp: LlamaCppBuild {
                ggml_version: build.ggml_version.clone(),
                ggml_commit: build.ggml_commit.clone(),
                system_info: build.system_info.clone(),
                compiled_cpu_features: build.compiled_cpu_features.iter().map(|f| f.to_string()).collect(),
                gpu_offload: build.gpu_offload,
            },
            model,
            adapter,
            suites: ev.suites.clone(),
            judges: self.judges.clone(),
            sampling: c.sampling.clone(),
            engine: EngineProvenance {
                threads: e.effective_threads() as u32,
                parallel: e.parallel as u32,
                batch_size: e.batch_size as u32,
                gpu_layers: e.gpu_layers as i32,
                kv_unified: e.kv_unified,
                // The build and engine keep every product's kernel whatever the batch, for the
                // weight types where that was measured.
                batch_invariant: ev.remote.is_none() && engine::batch_invariant(&build, e) && weights_invariant,
            },
            chat_template: ChatTemplateProvenance {
                template_override: c.model.chat_template.clone(),
                system_prompt: c.model.system_prompt.clone(),
                turn_format: c.model.turn_format.clone(),
            },
            seeds: SeedScheme { base_seed: c.sampling.seed, repeat, scheme: SEED_SCHEME.to_owned() },
            repeat,
            settings_hash: self.hash(&checkpoint.sha256, repeat),
            fingerprint: Some(self.fingerprint()),
            created_ms: crate::store::now_ms(),
            rewording: ev.rewording.clone(),
            remote: ev.remote.as_ref().map(|r| RemoteProvenance {
                api: r.api.as_str().to_owned(),
                servers: r.servers.clone(),
                served: ev.served_as(&checkpoint.sha256, std::path::Path::new(path)),
                batch_invariant: false,
            }),
        }
    }

    /// What one evaluation under these settings is, in words: the suites and their slices,
    /// K, the token budget, the judges, and the sample count.
    pub fn plan_summary(&self) -> String {
        let e = self.eval;
        let c = &e.config;
        let suites: Vec<String> = e
            .suites
            .iter()
            .map(|s| {
                let of = if s.prompts < s.available { format!(" of {}", s.available) } else { String::new() };
                format!("{} {}{of}{}", s.name, s.prompts, if s.control { " (control)" } else { "" })
            })
            .collect();
        let k = match c.sampling.adaptive() {
            Some(a) => format!(
                "K = {}..{} (adaptive, target half-width {})",
                a.min_samples, a.max_samples, a.target_half_width
            ),
            None => format!("K = {}", c.sampling.samples),
        };
        let judges: Vec<&str> = self.judges.iter().map(|j| j.name.as_str()).collect();
        let sliced = e.suites.iter().any(|s| s.prompts < s.available);
        format!(
            "{} prompts ({}) × {k} seeded samples × at most {} tokens = {} samples{}, judged by {}{}",
            e.prompts.len(),
            suites.join(", "),
            c.sampling.max_tokens,
            e.prompts.len() as u64 * u64::from(e.first_k()),
            if c.sampling.repeats > 1 { format!(" per repeat, {} repeats", c.sampling.repeats) } else { String::new() },
            judges.join(", "),
            if sliced {
                "; slices of the suites (remove `limit` / `per_category` in the config for the full suites)"
            } else {
                ""
            },
        )
    }
}
