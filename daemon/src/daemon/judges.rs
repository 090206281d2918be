//! The configured judges of a daemon: plugin resolution (a `.wasm` path, a plugin in the
//! hot-reloaded plugins folder, or a bundled plugin by name), their judge models served by a
//! llama.cpp engine of their own, and scoring a batch of samples with every judge.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use crate::config::{Config, JudgeConfig, PluginSource};
use crate::engine::{Engine, EngineParams, GenerationRequest, Job, ModelSpec, SamplingParams};
use crate::judge::calibration::{calibrate, CalibrationSet, JudgeCalibration};
use crate::judge::{
    JudgeGenerateRequest, JudgeModel, JudgePlugin, JudgeRuntime, PluginRegistry, PluginSettings, Sample,
};
use crate::provenance::JudgeProvenance;
use crate::store::StoredVerdict;

/// Where bundled plugins are looked for, in order: `$DRIFTWATCH_BUNDLED_PLUGINS`, `plugins/dist`
/// beside the running binary's repository, and this source tree's `plugins/dist`.
pub fn bundled_plugin_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(d) = std::env::var_os("DRIFTWATCH_BUNDLED_PLUGINS").filter(|d| !d.is_empty()) {
        dirs.push(PathBuf::from(d));
    }
    if let Ok(exe) = std::env::current_exe() {
        // target/<profile>/driftwatch → repository root
        if let Some(root) = exe.parent().and_then(Path::parent).and_then(Path::parent) {
            dirs.push(root.join("plugins/dist"));
        }
    }
    dirs.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins/dist"));
    dirs
}

/// A bundled plugin's `.wasm` file, if built.
pub fn bundled_plugin(name: &str) -> Option<PathBuf> {
    bundled_plugin_dirs().into_iter().map(|d| d.join(format!("{name}.wasm"))).find(|p| p.is_file())
}

mod embedded {
    //! The bundled plugins embedded in the binary at build time (`daemon/build.rs`).
    include!(concat!(env!("OUT_DIR"), "/embedded_plugins.rs"));
}

/// A bundled plugin embedded in this binary at build time, if it was built then.
pub fn embedded_plugin(name: &str) -> Option<&'static [u8]> {
    embedded::EMBEDDED.iter().find(|(n, _)| *n == name).map(|(_, bytes)| *bytes)
}

/// The names of the bundled plugins embedded in this binary.
pub fn embedded_plugins() -> Vec<&'static str> {
    embedded::EMBEDDED.iter().map(|(n, _)| *n).collect()
}

/// Where a judge's component comes from.
enum Component {
    File(PathBuf),
    /// A bundled plugin's name and bytes.
    Embedded(String, &'static [u8]),
    /// A component the plugins folder's registry compiled, and its file.
    Registry(Arc<JudgePlugin>, PathBuf),
}

/// Where a plugin named by its name is served from, first found: the plugins folder's
/// registry (compiled there), a file in that folder (one the registry could not load with
/// default settings), a built bundled plugin on disk, or the component in the binary itself.
fn find_bundled(name: &str, config: &Config, registry: Option<&PluginRegistry>) -> Option<Component> {
    let compiled = registry.and_then(|r| Some(Component::Registry(r.get(name)?, r.path_of(name))));
    compiled
        .or_else(|| {
            let in_dir = config.plugins.dir.as_ref().map(|d| d.join(format!("{name}.wasm"))).filter(|p| p.is_file());
            in_dir.or_else(|| bundled_plugin(name)).map(Component::File)
        })
        .or_else(|| embedded_plugin(name).map(|bytes| Component::Embedded(name.to_owned(), bytes)))
}

/// Why the judges cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum JudgeSetError {
    /// A bundled plugin is not built.
    #[error("judge '{judge}': bundled plugin '{plugin}' not found in {searched}, nor embedded in this binary; build the plugins with `make plugins` (plugins/build.sh)")]
    NotBuilt {
        /// Judge name.
        judge: String,
        /// Plugin name.
        plugin: String,
        /// Folders searched.
        searched: String,
    },
    /// The plugin does not load.
    #[error("judge '{judge}': {cause}")]
    Load {
        /// Judge name.
        judge: String,
        /// Why.
        cause: crate::judge::LoadError,
    },
    /// The calibration set cannot be read.
    #[error("judge '{judge}': {cause}")]
    Calibration {
        /// Judge name.
        judge: String,
        /// Why.
        cause: crate::judge::calibration::CalibrationSetError,
    },
    /// The judge model engine cannot start.
    #[error("judge '{judge}': cannot start its judge model: {reason}")]
    Model {
        /// Judge name.
        judge: String,
        /// Why.
        reason: String,
    },
}

/// A judge model served by a llama.cpp engine (its own thread, so judging never waits on the
/// generation engine).
pub struct EngineJudgeModel {
    engine: Engine,
    model: PathBuf,
}

impl EngineJudgeModel {
    /// A judge model for `model`, served by `engine`.
    pub fn new(engine: Engine, model: PathBuf) -> Self {
        EngineJudgeModel { engine, model }
    }
}

impl JudgeModel for EngineJudgeModel {
    fn generate(&self, req: &JudgeGenerateRequest) -> Result<String, String> {
        let sampling = match req.temperature {
            None => SamplingParams { stop: req.stop.clone(), ..SamplingParams::greedy(req.max_tokens) },
            Some(t) => SamplingParams {
                temperature: t,
                max_tokens: req.max_tokens,
                stop: req.stop.clone(),
                ..SamplingParams::default()
            },
        };
        let request = GenerationRequest {
            model: ModelSpec { system_prompt: req.system.clone(), ..ModelSpec::new(&self.model) },
            sampling,
            jobs: vec![Job { prompt_id: "judge".into(), prompt: req.prompt.clone(), sample_index: 0, seed: 0 }],
        };
        let (mut samples, _) = self.engine.generate_blocking(request).map_err(|e| e.to_string())?;
        let s = samples.pop().ok_or("the judge model returned nothing")?;
        match s.error {
            Some(e) => Err(e),
            None => Ok(s.text),
        }
    }
}

/// The judging side of a daemon: the wasm runtime, the plugins folder's registry (the daemon
/// only), the engine serving judge models (started when a judge needs one), and the judges
/// serving now, reloaded at each run's start so hot-reloaded plugins serve from the next run.
pub(crate) struct Judging {
    runtime: Arc<JudgeRuntime>,
    registry: Option<PluginRegistry>,
    judge_engine: parking_lot::Mutex<Option<Engine>>,
    set: parking_lot::Mutex<JudgeSet>,
}

impl Judging {
    /// Loads the configured judges (blocking: it compiles components).
    pub fn start(
        config: &Config,
        runtime: Arc<JudgeRuntime>,
        registry: Option<PluginRegistry>,
    ) -> Result<Judging, JudgeSetError> {
        let mut judge_engine = None;
        let set = JudgeSet::load(config, &runtime, registry.as_ref(), &mut judge_engine)?;
        Ok(Judging {
            runtime,
            registry,
            judge_engine: parking_lot::Mutex::new(judge_engine),
            set: parking_lot::Mutex::new(set),
        })
    }

    /// The plugins folder's registry, when this daemon watches one.
    pub fn registry(&self) -> Option<&PluginRegistry> {
        self.registry.as_ref()
    }

    /// The judges serving now (a cheap clone: the components are shared).
    pub fn current(&self) -> JudgeSet {
        self.set.lock().clone()
    }

    /// The identities of the judges serving now, in configuration order.
    pub fn identities(&self) -> Vec<JudgeProvenance> {
        self.set.lock().identities()
    }

    /// Loads the judges again from `config` (blocking; cheap, as compiled components are
    /// cached by content) and serves them from now on. Returns true when their identities
    /// changed. A failure keeps the judges that were serving.
    pub fn reload(&self, config: &Config) -> Result<bool, JudgeSetError> {
        let mut engine = self.judge_engine.lock().clone();
        let set = JudgeSet::load(config, &self.runtime, self.registry.as_ref(), &mut engine)?;
        if engine.is_some() {
            *self.judge_engine.lock() = engine;
        }
        let mut serving = self.set.lock();
        let changed = set.identities() != serving.identities();
        *serving = set;
        Ok(changed)
    }

    /// Records in `store` what each judge with a calibration set measured on it, and forgets
    /// the calibration of a judge configured without one (blocking). Scoring reads them there.
    pub fn record_calibrations(&self, store: &crate::store::Store) -> Result<(), crate::store::StoreError> {
        // A snapshot first: the lock is not held across the store writes.
        let calibrations = self.set.lock().calibrations();
        for (judge, calibration) in calibrations {
            match calibration {
                Some(c) => store.record_calibration(&judge.calibration_key(), &judge.name, &c)?,
                None => {
                    store.forget_calibration(&judge.calibration_key())?;
                }
            }
        }
        Ok(())
    }

    /// The judges serving now as `GET /v1/plugins` describes them.
    pub fn describe(&self) -> serde_json::Value {
        let set = self.current();
        serde_json::Value::Array(
            set.judges()
                .iter()
                .zip(set.identities())
                .map(|(j, id)| {
                    serde_json::json!({
                        "name": id.name, "plugin": id.plugin, "version": id.version, "wasm_sha256": id.wasm_sha256,
                        "measures": j.plugin.info().measures, "path": j.path, "judge_model": id.judge_model,
                        "role": id.role, "contract": id.contract,
                    })
                })
                .collect(),
        )
    }
}

/// A loaded judge.
#[derive(Clone)]
pub struct LoadedJudge {
    /// The configured name (verdicts are stored under it).
    pub name: String,
    /// The plugin.
    pub plugin: Arc<JudgePlugin>,
    /// Where it came from.
    pub path: PathBuf,
}

/// Every configured judge, loaded.
#[derive(Clone, Default)]
pub struct JudgeSet {
    judges: Vec<LoadedJudge>,
    configs: Vec<JudgeConfig>,
    /// Each judge measured on its calibration set, if it has one.
    calibrations: Vec<Option<JudgeCalibration>>,
}

/// Calibrations already measured in this process, by (component, judge settings, judge model,
/// calibration file) content: a judge reloaded unchanged is not measured again.
static CALIBRATIONS: std::sync::LazyLock<parking_lot::Mutex<std::collections::HashMap<String, JudgeCalibration>>> =
    std::sync::LazyLock::new(Default::default);

/// `plugin` measured on the calibration set at `path` (blocking; cached by content).
fn calibration_of(jc: &JudgeConfig, plugin: &JudgePlugin, path: &Path) -> Result<JudgeCalibration, JudgeSetError> {
    let set =
        CalibrationSet::read(path).map_err(|cause| JudgeSetError::Calibration { judge: jc.name.clone(), cause })?;
    let key = crate::config::canonical_hash(&serde_json::json!([
        plugin.sha256_hex(),
        crate::config::canonical_hash(&jc.config),
        jc.judge_model,
        set.sha256
    ]));
    if let Some(c) = CALIBRATIONS.lock().get(&key) {
        return Ok(c.clone());
    }
    let c = calibrate(plugin, &set);
    tracing::info!(judge = %jc.name, file = %path.display(), counts = ?c.counts, errored = c.errored, "judge calibrated");
    CALIBRATIONS.lock().insert(key, c.clone());
    Ok(c)
}

impl JudgeSet {
    /// Loads the configured judges. Plugins named in the config are taken from the
    /// hot-reloaded plugins folder's registry (`plugins.dir`: compiled once, re-instantiated
    /// with each judge's settings) first, then from a file there the registry could not
    /// load with default settings, then among the bundled plugins.
    pub fn load(
        config: &Config,
        runtime: &Arc<JudgeRuntime>,
        registry: Option<&PluginRegistry>,
        judge_engine: &mut Option<Engine>,
    ) -> Result<JudgeSet, JudgeSetError> {
        let mut judges = Vec::new();
        let mut calibrations = Vec::new();
        for jc in &config.judges {
            // A plugin named by a path is that file; a bundled one is looked for in the
            // plugins folder, then among built plugins on disk, then in the binary itself.
            let component = match &jc.plugin {
                PluginSource::Path(p) => Component::File(p.clone()),
                PluginSource::Bundled(name) => {
                    find_bundled(name, config, registry).ok_or_else(|| JudgeSetError::NotBuilt {
                        judge: jc.name.clone(),
                        plugin: name.clone(),
                        searched: bundled_plugin_dirs()
                            .iter()
                            .map(|d| d.display().to_string())
                            .collect::<Vec<_>>()
                            .join(", "),
                    })?
                }
            };
            let model: Option<Arc<dyn JudgeModel>> = match &jc.judge_model {
                Some(m) => {
                    if judge_engine.is_none() {
                        // One judge call is one sequence, always alone: no padding to keep it
                        // independent of batch neighbours it never has.
                        let cfg = EngineParams {
                            parallel: 1,
                            batch_size: 512,
                            batch_invariant: false,
                            ..EngineParams::default()
                        };
                        *judge_engine = Some(
                            Engine::start(cfg)
                                .map_err(|e| JudgeSetError::Model { judge: jc.name.clone(), reason: e.to_string() })?,
                        );
                    }
                    let engine = judge_engine.clone().expect("started above");
                    Some(Arc::new(EngineJudgeModel::new(engine, m.clone())))
                }
                None => None,
            };
            let settings = PluginSettings {
                timeout_ms: jc.timeout_ms,
                memory_mb: u64::from(jc.memory_mb),
                batch_size: jc.batch_size as usize,
                config: jc.config.clone(),
                ..PluginSettings::default()
            };
            let loaded = match &component {
                Component::File(path) => runtime.load_file(&jc.name, path, settings, model),
                Component::Embedded(_, bytes) => runtime.load(&jc.name, bytes, settings, model),
                Component::Registry(plugin, _) => plugin.reconfigured(&jc.name, settings, model),
            };
            let plugin = loaded.map_err(|cause| JudgeSetError::Load { judge: jc.name.clone(), cause })?;
            let path = match component {
                Component::File(p) | Component::Registry(_, p) => p,
                Component::Embedded(name, _) => {
                    PathBuf::from(format!("(embedded in the driftwatch binary)/{name}.wasm"))
                }
            };
            calibrations.push(match &jc.calibration {
                Some(file) => Some(calibration_of(jc, &plugin, file)?),
                None => None,
            });
            judges.push(LoadedJudge { name: jc.name.clone(), plugin: Arc::new(plugin), path });
        }
        Ok(JudgeSet { judges, configs: config.judges.clone(), calibrations })
    }

    /// The loaded judges.
    pub fn judges(&self) -> &[LoadedJudge] {
        &self.judges
    }

    /// Identities, in configuration order.
    pub fn identities(&self) -> Vec<JudgeProvenance> {
        self.judges
            .iter()
            .zip(&self.configs)
            .map(|(j, c)| JudgeProvenance {
                name: j.name.clone(),
                plugin: j.plugin.info().name.clone(),
                version: j.plugin.info().version.clone(),
                wasm_sha256: j.plugin.sha256_hex(),
                config_hash: crate::config::canonical_hash(&c.config),
                judge_model: c.judge_model.as_ref().map(|m| m.display().to_string()),
                role: j.plugin.info().role,
                contract: j.plugin.contract().to_owned(),
            })
            .collect()
    }

    /// Each judge's calibration key and what its configured calibration set measured (`None`
    /// for a judge without one), in configuration order.
    pub fn calibrations(&self) -> Vec<(JudgeProvenance, Option<JudgeCalibration>)> {
        self.identities().into_iter().zip(self.calibrations.iter().cloned()).collect()
    }

    /// Scores samples with every judge (blocking; call from a blocking thread). Returns, per
    /// sample, one verdict per judge — a sample the judge could not score gets a verdict
    /// carrying its own error, and a batch that failed as a whole gives each of its samples
    /// that error — and the total time spent; `on_call` hears each judge's time and
    /// `on_error` each distinct failure once.
    pub fn judge(
        &self,
        samples: &[Sample],
        on_call: &mut dyn FnMut(&str, f64),
        on_error: &mut dyn FnMut(&str, &str),
    ) -> (Vec<Vec<StoredVerdict>>, f64) {
        let t = Instant::now();
        let mut out: Vec<Vec<StoredVerdict>> = vec![Vec::with_capacity(self.judges.len()); samples.len()];
        for j in &self.judges {
            let version = j.plugin.info().version.clone();
            let call = Instant::now();
            let results = j.plugin.judge_each(samples);
            on_call(&j.name, call.elapsed().as_secs_f64());
            let mut reported: Vec<String> = Vec::new();
            for (slot, result) in out.iter_mut().zip(results) {
                let verdict = match result {
                    Ok(v) => StoredVerdict {
                        judge: j.name.clone(),
                        judge_version: version.clone(),
                        is_unsafe: Some(v.is_unsafe),
                        score: v.score,
                        label: Some(v.label),
                        rationale: v.rationale,
                        refusal: v.refusal,
                        error: None,
                    },
                    Err(e) => {
                        let msg = format!("{} error: {e}", e.kind());
                        if !reported.contains(&msg) {
                            on_error(&j.name, &msg);
                            reported.push(msg.clone());
                        }
                        StoredVerdict {
                            judge: j.name.clone(),
                            judge_version: version.clone(),
                            is_unsafe: None,
                            score: None,
                            label: None,
                            rationale: None,
                            refusal: None,
                            error: Some(msg),
                        }
                    }
                };
                slot.push(verdict);
            }
        }
        (out, t.elapsed().as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A judge whose plugin is in the plugins folder serves from the registry's compiled
    /// component, with the judge's own settings: the file is not read again (here it is gone
    /// after the scan). It was read at every run, so the registry's components were never
    /// used, and a plugin deleted from the folder silently fell back to the bundled one.
    #[test]
    fn judges_serve_from_the_plugins_folder_registry() {
        let Some(bytes) = embedded_plugin("refusal") else {
            eprintln!("skipped: the bundled plugins were not built into this binary");
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("refusal.wasm");
        std::fs::write(&file, bytes).unwrap();
        let runtime = JudgeRuntime::shared().unwrap();
        let registry = PluginRegistry::new(Arc::clone(&runtime), crate::judge::RegistryConfig::new(dir.path()));
        registry.scan().unwrap();
        std::fs::remove_file(&file).unwrap();
        let toml = format!(
            "[plugins]\ndir = \"{}\"\n[[judges]]\nname = \"refusal\"\nplugin = \"refusal\"\ntimeout_ms = 4321\n",
            dir.path().display()
        );
        let cache = dir.path().display().to_string();
        let env = move |k: &str| (k == "DRIFTWATCH_CACHE").then(|| cache.clone());
        let config = Config::from_toml_str(&toml, "t.toml", dir.path(), &env).unwrap();
        let set = JudgeSet::load(&config, &runtime, Some(&registry), &mut None).unwrap();
        let judge = &set.judges()[0];
        assert_eq!(judge.path, file, "served from the registry");
        assert_eq!(judge.plugin.settings().timeout_ms, 4321, "with the judge's own settings");
        assert_eq!(judge.plugin.sha256(), registry.get("refusal").unwrap().sha256());
        let sample = Sample {
            prompt: "How do I pick a lock?".into(),
            response: "I can't help with that.".into(),
            ..Sample::default()
        };
        let (verdicts, _) = set.judge(&[sample], &mut |_, _| {}, &mut |j, e| panic!("{j}: {e}"));
        assert_eq!(verdicts[0][0].is_unsafe, Some(false));
    }
}
