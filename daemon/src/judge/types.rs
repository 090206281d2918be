//! Host-side data types of the judge contract (serde-friendly mirrors of the WIT records).

use serde::{Deserialize, Serialize};

use super::bindings::wit;

/// Why generation of a response stopped: the engine's own type, which the contract mirrors.
pub use crate::engine::FinishReason;

/// One model response to judge.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sample {
    /// Stable identifier of the prompt.
    #[serde(default)]
    pub prompt_id: String,
    /// Harm category of the prompt.
    #[serde(default)]
    pub category: String,
    /// The prompt text.
    pub prompt: String,
    /// The model's response.
    pub response: String,
    /// Index among the repeated samples of one prompt.
    #[serde(default)]
    pub sample_index: u32,
    /// Sampling seed.
    #[serde(default)]
    pub seed: u64,
    /// Why generation stopped.
    #[serde(default)]
    pub finish_reason: FinishReason,
}

/// A judge's decision about one sample.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JudgeVerdict {
    /// True when the judge considers the response unsafe (per that judge's definition).
    #[serde(rename = "unsafe")]
    pub is_unsafe: bool,
    /// Optional finite score.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub score: Option<f64>,
    /// Short machine-readable label.
    pub label: String,
    /// Optional justification.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub rationale: Option<String>,
    /// Whether the response is a refusal, when the judge can tell.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub refusal: Option<bool>,
}

/// What a plugin says about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JudgeInfo {
    /// Short unique name.
    pub name: String,
    /// The plugin's own version.
    pub version: String,
    /// What the judge measures.
    pub measures: String,
    /// What its verdicts measure, as the plugin declares it (contract 0.2 and later); `None`
    /// for a 0.1 plugin, whose role is inferred from its name and labels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<JudgeRole>,
}

/// What a judge's verdicts measure (the WIT `judge-role`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JudgeRole {
    /// `unsafe` means a harmful response.
    Harm,
    /// `unsafe` means an incoherent response.
    Coherence,
}

impl JudgeRole {
    /// The lowercase name.
    pub fn as_str(&self) -> &'static str {
        match self {
            JudgeRole::Harm => "harm",
            JudgeRole::Coherence => "coherence",
        }
    }
}

impl From<&Sample> for wit::Sample {
    fn from(s: &Sample) -> Self {
        wit::Sample {
            prompt_id: s.prompt_id.clone(),
            category: s.category.clone(),
            prompt: s.prompt.clone(),
            response: s.response.clone(),
            sample_index: s.sample_index,
            seed: s.seed,
            finish_reason: match s.finish_reason {
                FinishReason::Stop => wit::FinishReason::Stop,
                FinishReason::Length => wit::FinishReason::Length,
                FinishReason::Cancelled => wit::FinishReason::Cancelled,
                FinishReason::Error => wit::FinishReason::Error,
            },
        }
    }
}

impl From<wit::Verdict> for JudgeVerdict {
    fn from(v: wit::Verdict) -> Self {
        JudgeVerdict {
            is_unsafe: v.unsafe_,
            score: v.score,
            label: v.label,
            rationale: v.rationale,
            refusal: v.refusal,
        }
    }
}

impl From<wit::JudgeInfo> for JudgeInfo {
    fn from(i: wit::JudgeInfo) -> Self {
        let role = match i.role {
            wit::JudgeRole::Harm => JudgeRole::Harm,
            wit::JudgeRole::Coherence => JudgeRole::Coherence,
        };
        JudgeInfo { name: i.name, version: i.version, measures: i.measures, role: Some(role) }
    }
}
