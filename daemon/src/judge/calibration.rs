//! A judge measured against human labels: reading a labelled calibration set (JSON Lines of
//! `response` and `label`), judging it with a plugin, and counting the judge's hits and misses
//! ([`crate::stats::CalibrationCounts`]); the statistics are [`crate::stats::judge_accuracy`]
//! and [`crate::stats::corrected_rate`].

use std::io::BufRead;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{JudgePlugin, Sample};
use crate::stats::CalibrationCounts;

/// One labelled response of a calibration set.
#[derive(Debug, Clone, PartialEq)]
pub struct LabelledResponse {
    /// The response, with its prompt (and finish reason) when the file gives them.
    pub sample: Sample,
    /// True when a person labelled the response unsafe.
    pub labelled_unsafe: bool,
    /// Whether a person read the response as a refusal, when labelled.
    pub refused: Option<bool>,
    /// Whether a person read the response as coherent, when labelled.
    pub coherent: Option<bool>,
}

/// What a judge's verdicts are measured against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Against {
    /// `label`: the judge's unsafe verdict against "unsafe" (harmful compliance).
    #[default]
    Unsafe,
    /// `refused`: the judge's refusal field against a person's reading of a refusal.
    Refused,
    /// `coherent`: the judge's unsafe verdict (a coherence judge's "incoherent") against
    /// `coherent = false`.
    Incoherent,
}

impl Against {
    /// The positive and the negative class, in words.
    pub fn classes(self) -> (&'static str, &'static str) {
        match self {
            Against::Unsafe => ("unsafe", "safe"),
            Against::Refused => ("refusal", "not a refusal"),
            Against::Incoherent => ("incoherent", "coherent"),
        }
    }
}

/// A line of the file as written: `response` and `label` (`"unsafe"` / `"safe"`, or a
/// boolean meaning unsafe) are required; `prompt`, `category`, `id`, `finish_reason`, and the
/// further labels `refused` and `coherent` (booleans) are optional, as are `checkpoint` and
/// `suite` (where the response came from; kept by the file, not used).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    prompt: String,
    #[serde(default)]
    category: String,
    response: String,
    label: serde_json::Value,
    #[serde(default)]
    finish_reason: crate::engine::FinishReason,
    #[serde(default)]
    refused: Option<bool>,
    #[serde(default)]
    coherent: Option<bool>,
    #[serde(default)]
    #[allow(dead_code)]
    checkpoint: Option<String>,
    #[serde(default)]
    #[allow(dead_code)]
    suite: Option<String>,
    /// Free text about the label (kept by the file, not used).
    #[serde(default)]
    #[allow(dead_code)]
    note: Option<String>,
}

/// Why a calibration set cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CalibrationSetError {
    /// The file cannot be read.
    #[error("calibration set {path}: {cause}")]
    Io { path: PathBuf, cause: std::io::Error },
    /// A line is not a labelled response.
    #[error("calibration set {path}:{line}: {message}")]
    Line { path: PathBuf, line: usize, message: String },
    /// The file holds no labelled response.
    #[error("calibration set {0}: no labelled responses")]
    Empty(PathBuf),
}

/// A labelled calibration set read from a file.
#[derive(Debug, Clone)]
pub struct CalibrationSet {
    pub path: PathBuf,
    /// sha256 of the file's bytes.
    pub sha256: String,
    pub items: Vec<LabelledResponse>,
}

impl CalibrationSet {
    /// Reads a JSON Lines calibration set; blank lines and lines starting with `//` are
    /// skipped, and every error names its line.
    pub fn read(path: &Path) -> Result<CalibrationSet, CalibrationSetError> {
        let bytes = std::fs::read(path).map_err(|cause| CalibrationSetError::Io { path: path.to_owned(), cause })?;
        let sha256 = hex::encode(Sha256::digest(&bytes));
        let mut items = Vec::new();
        for (i, line) in bytes.lines().enumerate() {
            let bad = |message: String| CalibrationSetError::Line { path: path.to_owned(), line: i + 1, message };
            let line = line.map_err(|e| bad(e.to_string()))?;
            let text = line.trim();
            if text.is_empty() || text.starts_with("//") {
                continue;
            }
            let l: Line = serde_json::from_str(text).map_err(|e| bad(format!("not a labelled response: {e}")))?;
            let labelled_unsafe = match &l.label {
                serde_json::Value::Bool(b) => *b,
                serde_json::Value::String(s) if s == "unsafe" => true,
                serde_json::Value::String(s) if s == "safe" => false,
                other => return Err(bad(format!("label must be \"unsafe\", \"safe\" or a boolean, not {other}"))),
            };
            let sample = Sample {
                prompt_id: l.id.unwrap_or_else(|| format!("line-{}", i + 1)),
                category: l.category,
                prompt: l.prompt,
                response: l.response,
                finish_reason: l.finish_reason,
                ..Sample::default()
            };
            items.push(LabelledResponse { sample, labelled_unsafe, refused: l.refused, coherent: l.coherent });
        }
        if items.is_empty() {
            return Err(CalibrationSetError::Empty(path.to_owned()));
        }
        Ok(CalibrationSet { path: path.to_owned(), sha256, items })
    }
}

/// A judge's verdicts on a calibration set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JudgeCalibration {
    /// The calibration file, as configured.
    pub file: String,
    /// sha256 of its bytes.
    pub sha256: String,
    pub counts: CalibrationCounts,
    /// Labelled responses the judge could not score (left out of the counts).
    pub errored: u64,
    /// What the verdicts were measured against (a harm judge's correction needs `unsafe`).
    #[serde(default)]
    pub against: Against,
    /// Responses without the label measured against (left out).
    #[serde(default)]
    pub unlabelled: u64,
}

/// Judges every labelled response with `plugin` (blocking) and counts hits and misses against
/// the `unsafe` labels. A response the judge fails on is counted in `errored`, never as safe.
pub fn calibrate(plugin: &JudgePlugin, set: &CalibrationSet) -> JudgeCalibration {
    calibrate_against(plugin, set, Against::Unsafe)
}

/// The same against any of the labels: responses without that label are left out (counted in
/// `unlabelled`), and against `refused`, a verdict that does not say whether the response is a
/// refusal counts as errored.
pub fn calibrate_against(plugin: &JudgePlugin, set: &CalibrationSet, against: Against) -> JudgeCalibration {
    let truth = |i: &LabelledResponse| match against {
        Against::Unsafe => Some(i.labelled_unsafe),
        Against::Refused => i.refused,
        Against::Incoherent => i.coherent.map(|c| !c),
    };
    let items: Vec<&LabelledResponse> = set.items.iter().filter(|i| truth(i).is_some()).collect();
    let samples: Vec<Sample> = items.iter().map(|i| i.sample.clone()).collect();
    let mut counts = CalibrationCounts::default();
    let mut errored = 0;
    let mut first_error = None;
    for (item, result) in items.iter().zip(plugin.judge_each(&samples)) {
        let judged = match (result, against) {
            (Ok(v), Against::Refused) => v.refusal,
            (Ok(v), _) => Some(v.is_unsafe),
            (Err(e), _) => {
                first_error.get_or_insert_with(|| e.to_string());
                None
            }
        };
        match (truth(item), judged) {
            (Some(t), Some(j)) => counts.add(t, j),
            _ => errored += 1,
        }
    }
    if let Some(e) = first_error {
        tracing::warn!(errored, "the judge could not score {errored} labelled responses; the first: {e}");
    }
    JudgeCalibration {
        file: set.path.display().to_string(),
        sha256: set.sha256.clone(),
        counts,
        errored,
        against,
        unlabelled: (set.items.len() - items.len()) as u64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_calibration_set_is_read_with_errors_naming_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("set.jsonl");
        std::fs::write(
            &p,
            "// a comment\n{\"prompt\": \"q\", \"response\": \"No.\", \"label\": \"safe\"}\n\n{\"response\": \"Sure: step 1\", \"label\": true, \"id\": \"x\", \"note\": \"complies\"}\n",
        )
        .unwrap();
        let set = CalibrationSet::read(&p).unwrap();
        assert_eq!(set.items.len(), 2);
        assert!(!set.items[0].labelled_unsafe && set.items[1].labelled_unsafe);
        assert_eq!(set.items[0].sample.prompt_id, "line-2");
        assert_eq!(set.items[1].sample.prompt_id, "x");
        assert_eq!(set.sha256.len(), 64);
        assert_eq!((set.items[0].refused, set.items[0].coherent), (None, None));
        std::fs::write(
            &p,
            "{\"prompt\": \"q\", \"response\": \"I can't\", \"label\": \"safe\", \"refused\": true, \"coherent\": true, \"finish_reason\": \"length\", \"checkpoint\": \"aligned\", \"suite\": \"harmbench\"}\n",
        )
        .unwrap();
        let set = CalibrationSet::read(&p).unwrap();
        assert_eq!((set.items[0].refused, set.items[0].coherent), (Some(true), Some(true)));
        assert_eq!(set.items[0].sample.finish_reason, crate::engine::FinishReason::Length);
        for (text, needle) in [
            ("{\"response\": \"a\", \"label\": \"maybe\"}\n", ":1: label must be"),
            ("{\"response\": \"a\"}\n", ":1: not a labelled response"),
            ("{\"label\": \"safe\"}\n", ":1: not a labelled response"),
            ("{\"response\": \"a\", \"label\": \"safe\", \"lable\": 1}\n", "unknown field"),
            ("\n// only comments\n", "no labelled responses"),
        ] {
            std::fs::write(&p, text).unwrap();
            let e = CalibrationSet::read(&p).unwrap_err().to_string();
            assert!(e.contains(needle), "{text:?}: {e}");
        }
        let e = CalibrationSet::read(&dir.path().join("missing.jsonl")).unwrap_err().to_string();
        assert!(e.contains("missing.jsonl"), "{e}");
    }
}
