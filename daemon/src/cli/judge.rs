//! `driftwatch judge`: scores a JSONL file of samples with one judge plugin (the scoring itself
//! is [`crate::judge::cli::judge_file`]), or measures the plugin against a labelled
//! calibration set (`--calibrate`: [`crate::judge::cli::calibrate_file`]).

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Args;

use crate::engine::{Engine, EngineParams};
use crate::setup;

/// `driftwatch judge --plugin FILE.wasm (--input SAMPLES.jsonl | --calibrate LABELLED.jsonl)
/// [--config SETTINGS.toml]`
#[derive(Debug, Clone, Args)]
#[command(group(clap::ArgGroup::new("what").required(true).args(["input", "calibrate"])))]
pub struct JudgeArgs {
    /// The plugin component.
    #[arg(long)]
    pub plugin: PathBuf,
    /// JSON Lines file of samples: prompt, response (required), category, prompt_id,
    /// sample_index, seed, finish_reason (stop|length|cancelled|error) (optional).
    #[arg(long)]
    pub input: Option<PathBuf>,
    /// JSON Lines file of labelled responses: response and label ("unsafe" / "safe")
    /// required, prompt, category and id optional. Prints the judge's confusion matrix,
    /// sensitivity, specificity and Cohen's κ against the labels, with intervals.
    #[arg(long, value_name = "LABELLED.jsonl")]
    pub calibrate: Option<PathBuf>,
    /// With --calibrate: which label the verdicts are measured against: `unsafe` (the
    /// `label`), `refused` (the judge's refusal field against `refused`), or `incoherent`
    /// (the judge's unsafe verdict against `coherent = false`, for a coherence judge).
    #[arg(long, value_enum, default_value = "unsafe", requires = "calibrate")]
    pub against: crate::judge::calibration::Against,
    /// With --calibrate: print the figures as one JSON object.
    #[arg(long, requires = "calibrate")]
    pub json: bool,
    /// Plugin settings (timeout_ms, memory_mb, ..., and a `[config]` table for the plugin).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// A GGUF judge model for plugins that ask for text (harm-rubric, guard); `default` is the
    /// cached default model (a 135M model is no reliable judge: use a capable one).
    #[arg(long)]
    pub judge_model: Option<String>,
}

/// `driftwatch judge`: one JSON verdict per line on standard output.
pub fn run(a: JudgeArgs) -> Result<()> {
    let model: Option<Arc<dyn crate::judge::JudgeModel>> = match &a.judge_model {
        Some(m) => {
            let path = setup::resolve_model(m).map_err(anyhow::Error::msg)?;
            crate::checkpoint::inspect_model(&path)?;
            // One judge call is one sequence, always alone (as the daemon's judge engine).
            let engine =
                Engine::start(EngineParams { parallel: 1, batch_invariant: false, ..EngineParams::default() })?;
            Some(Arc::new(crate::daemon::judges::EngineJudgeModel::new(engine, path)))
        }
        None => None,
    };
    let mut out = std::io::stdout().lock();
    match &a.calibrate {
        Some(set) => {
            crate::judge::cli::calibrate_file(&a, model, &mut out)
                .with_context(|| format!("calibrating {} on {}", a.plugin.display(), set.display()))?;
        }
        None => {
            let input = a.input.as_deref().unwrap_or(std::path::Path::new("-"));
            let done = crate::judge::cli::judge_file(&a, model, &mut out)
                .with_context(|| format!("judging {} with {}", input.display(), a.plugin.display()))?;
            if done.failed > 0 {
                tracing::warn!(
                    "{} of {} samples could not be judged (their lines carry `error`)",
                    done.failed,
                    done.judged + done.failed
                );
            }
            if done.judged == 0 && done.failed > 0 {
                out.flush()?;
                anyhow::bail!("{} could not judge any of the {} samples", a.plugin.display(), done.failed);
            }
        }
    }
    out.flush()?;
    Ok(())
}
