//! A run's provenance as a typed record: what was evaluated (model, adapter, suites, judges),
//! how (sampling, engine, template, seeds) and with which build, plus the settings hash and
//! comparability fingerprint. The daemon writes one for every run; readers take it back with
//! [`Provenance::of`], which accepts records of older versions (a missing or unreadable field
//! takes its default), so nothing reads provenance JSON by key.
//!
//! The store keeps each record verbatim (its digest, in `run.completed`, is of those bytes,
//! and fields written by a newer version survive a round trip through an older one).

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

use crate::config::SamplingConfig;
use crate::judge::JudgeRole;
use crate::stats::RunFingerprint;

/// Deserializes a field leniently: a value of the wrong shape takes the field's default
/// instead of failing the whole record.
fn lenient<'de, D: Deserializer<'de>, T: DeserializeOwned + Default>(d: D) -> Result<T, D::Error> {
    let v = Value::deserialize(d)?;
    Ok(serde_json::from_value(v).unwrap_or_default())
}

/// The provenance of one run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Provenance {
    /// driftwatch's version.
    #[serde(deserialize_with = "lenient")]
    pub driftwatch_version: String,
    /// The llama.cpp build.
    #[serde(deserialize_with = "lenient")]
    pub llama_cpp: LlamaCppBuild,
    /// The model file that was loaded (for an adapter, its base model).
    #[serde(deserialize_with = "lenient")]
    pub model: ModelFile,
    /// The adapter applied to it, if the checkpoint is one (`null` otherwise).
    #[serde(deserialize_with = "lenient")]
    pub adapter: Option<AdapterFile>,
    /// The prompt suites.
    #[serde(deserialize_with = "lenient")]
    pub suites: Vec<SuiteIdentity>,
    /// The judges, in configuration order.
    #[serde(deserialize_with = "lenient")]
    pub judges: Vec<JudgeProvenance>,
    /// The `[sampling]` settings.
    #[serde(deserialize_with = "lenient")]
    pub sampling: SamplingConfig,
    /// The engine's settings as it ran.
    #[serde(deserialize_with = "lenient")]
    pub engine: EngineProvenance,
    /// The chat template override and system prompt.
    #[serde(deserialize_with = "lenient")]
    pub chat_template: ChatTemplateProvenance,
    /// How the samples' seeds were drawn.
    #[serde(deserialize_with = "lenient")]
    pub seeds: SeedScheme,
    /// The repeat this run is (repeats draw disjoint seeds).
    #[serde(deserialize_with = "lenient")]
    pub repeat: u32,
    /// The hash of the evaluation settings (the dedup key, with the checkpoint's content).
    #[serde(deserialize_with = "lenient")]
    pub settings_hash: String,
    /// What must match for two runs to be compared.
    #[serde(deserialize_with = "lenient")]
    pub fingerprint: Option<RunFingerprint>,
    /// When the record was made (ms since the Unix epoch).
    #[serde(deserialize_with = "lenient")]
    pub created_ms: i64,
    /// The reworded prompts the run asked, when `model.rewording` was set.
    #[serde(deserialize_with = "lenient", skip_serializing_if = "Option::is_none")]
    pub rewording: Option<RewordingIdentity>,
    /// The inference servers that generated, for the `openai` backend (`null`/absent: the
    /// embedded engine, whose build is `llama_cpp`).
    #[serde(deserialize_with = "lenient", skip_serializing_if = "Option::is_none")]
    pub remote: Option<RemoteProvenance>,
}

/// The `openai` backend as a run used it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RemoteProvenance {
    /// `chat` (the server's template) or `completions` (driftwatch's).
    pub api: String,
    /// Every endpoint: its URL, the server and version it reported, the models it listed and
    /// the base model's served name there.
    pub servers: Vec<crate::engine::remote::ServerIdentity>,
    /// What this run's checkpoint was asked for.
    pub served: crate::engine::remote::ServedAs,
    /// Always false: servers batch continuously, so a seed's text can depend on the batch.
    pub batch_invariant: bool,
}

/// A rewording file as a run used it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RewordingIdentity {
    pub path: String,
    /// sha256 of the file's bytes.
    pub sha256: String,
    /// Prompts asked in the file's words.
    pub reworded: usize,
}

impl Provenance {
    /// Reads a stored record; what is missing or unreadable takes its default (a record that
    /// is not an object at all gives [`Provenance::default`]).
    pub fn of(value: &Value) -> Provenance {
        Provenance::deserialize(value).unwrap_or_default()
    }

    /// The record as stored.
    pub fn to_value(&self) -> Value {
        serde_json::to_value(self).unwrap_or_default()
    }

    /// The names of the control suites (benign prompts whose refusals are over-refusals).
    pub fn control_suites(&self) -> Vec<String> {
        self.suites.iter().filter(|s| s.control).map(|s| s.name.clone()).collect()
    }

    /// The role each judge declared (judges of 0.1 plugins, which declare none, are absent).
    pub fn declared_roles(&self) -> Vec<(String, JudgeRole)> {
        self.judges.iter().filter_map(|j| j.role.map(|r| (j.name.clone(), r))).collect()
    }
}

/// The llama.cpp build a run used.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LlamaCppBuild {
    pub ggml_version: String,
    pub ggml_commit: String,
    /// llama.cpp's system info line (backends and CPU features in use).
    pub system_info: String,
    /// CPU features the build was compiled for.
    pub compiled_cpu_features: Vec<String>,
    /// Whether the build can offload to a GPU.
    pub gpu_offload: bool,
}

/// A model file: where it was and what it held.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ModelFile {
    pub path: String,
    pub sha256: String,
}

/// A LoRA adapter as applied.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AdapterFile {
    pub path: String,
    pub sha256: String,
    /// The scale it was applied with.
    pub scale: f32,
}

/// A loaded suite.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SuiteIdentity {
    pub name: String,
    pub path: String,
    pub prompts: usize,
    pub content_hash: String,
    /// A control suite (benign prompts): its refusals are over-refusals, and its prompts are
    /// left out of the harm rates. Recorded only when set, so older runs keep their hashes.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub control: bool,
    /// Prompts in the suite's files before the slice (not part of the settings).
    #[serde(skip)]
    pub available: usize,
}

/// A judge as it took part in a run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct JudgeProvenance {
    /// Configured name.
    pub name: String,
    /// The plugin's own name.
    pub plugin: String,
    /// The plugin's version.
    pub version: String,
    /// sha256 of the wasm.
    pub wasm_sha256: String,
    /// sha256 of its configuration.
    pub config_hash: String,
    /// The judge model file, if any.
    pub judge_model: Option<String>,
    /// The role the plugin declared (contract 0.2 and later); absent for a 0.1 plugin.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<JudgeRole>,
    /// The contract version the plugin was built against (absent in records before 0.2).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub contract: String,
}

impl JudgeProvenance {
    /// The key of this judge's calibration in the store: its component, settings and judge
    /// model (the judge that scored, whatever it is named).
    pub fn calibration_key(&self) -> String {
        crate::config::canonical_hash(&serde_json::json!([self.wasm_sha256, self.config_hash, self.judge_model]))
    }
}

/// The engine as it ran.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct EngineProvenance {
    pub threads: u32,
    pub parallel: u32,
    pub batch_size: u32,
    pub gpu_layers: i32,
    pub kv_unified: bool,
    /// Whether a sample's text depends only on its own inputs, not on its batch neighbours.
    pub batch_invariant: bool,
}

/// The chat template settings.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ChatTemplateProvenance {
    /// The configured template, when it overrides the GGUF's own.
    #[serde(rename = "override")]
    pub template_override: Option<String>,
    pub system_prompt: Option<String>,
    /// The plain-text turn format used instead of a chat template, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub turn_format: Option<String>,
}

/// How seeds were drawn.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SeedScheme {
    pub base_seed: u64,
    pub repeat: u32,
    /// The derivation, in words.
    pub scheme: String,
}

/// The seed derivation [`crate::daemon::sample_seed`] implements, as recorded.
pub const SEED_SCHEME: &str =
    "seed(prompt, k) = first 4 bytes (LE) of sha256(base_seed LE ‖ repeat LE ‖ prompt id ‖ k LE)";

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A record of an older version (no batch_invariant, no judge roles, no fingerprint) and
    /// one with a field of the wrong shape are read, the rest of them intact.
    #[test]
    fn old_and_damaged_records_are_read_field_by_field() {
        let old = json!({
            "driftwatch_version": "0.1.0", "repeat": 2,
            "suites": [{"name": "harm", "path": "h.csv", "prompts": 3, "content_hash": "c"},
                       {"name": "benign", "path": "b.csv", "prompts": 2, "content_hash": "d", "control": true}],
            "judges": [{"name": "refusal", "plugin": "refusal", "version": "0.1.0", "wasm_sha256": "r",
                        "config_hash": "x", "judge_model": null}],
            "engine": {"threads": 2, "parallel": 4, "batch_size": 64, "gpu_layers": 0, "kv_unified": false},
            "adapter": null,
        });
        let p = Provenance::of(&old);
        assert_eq!(p.repeat, 2);
        assert_eq!(p.control_suites(), vec!["benign".to_string()]);
        assert_eq!(p.judges[0].role, None);
        assert!(p.declared_roles().is_empty());
        assert!(!p.engine.batch_invariant);
        assert_eq!(p.fingerprint, None);
        let damaged = json!({"repeat": "two", "suites": 7, "settings_hash": "h"});
        let p = Provenance::of(&damaged);
        assert_eq!((p.repeat, p.suites.len(), p.settings_hash.as_str()), (0, 0, "h"));
        assert_eq!(Provenance::of(&json!("not an object")), Provenance::default());
    }

    /// What is written is read back unchanged, with the declared roles.
    #[test]
    fn a_record_round_trips() {
        let p = Provenance {
            repeat: 1,
            judges: vec![JudgeProvenance {
                name: "coherence".into(),
                role: Some(JudgeRole::Coherence),
                contract: "0.2.0".into(),
                ..JudgeProvenance::default()
            }],
            adapter: Some(AdapterFile { path: "a.gguf".into(), sha256: "s".into(), scale: 1.0 }),
            ..Provenance::default()
        };
        let v = p.to_value();
        assert_eq!(v["judges"][0]["role"], "coherence");
        assert_eq!(v["chat_template"]["override"], Value::Null);
        assert_eq!(Provenance::of(&v), p);
        assert_eq!(p.declared_roles(), vec![("coherence".to_string(), JudgeRole::Coherence)]);
    }
}
