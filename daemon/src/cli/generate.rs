//! `driftwatch generate`: seeded samples for one prompt, or for every line of a prompts file,
//! printed as text or JSON lines.

use std::io::Write;

use anyhow::{bail, Result};
use clap::Args;
use serde_json::json;

use super::{ModelArgs, SamplingArgs};
use crate::engine::{EngineEvent, GenerationRequest, Job};

/// `driftwatch generate`.
#[derive(Debug, Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    sampling: SamplingArgs,
    /// The prompt.
    #[arg(long, required_unless_present = "prompts_file", conflicts_with = "prompts_file")]
    prompt: Option<String>,
    /// A text file with one prompt a line (blank lines skipped): each gets `--samples`
    /// samples, decoded together; JSON lines carry the prompt's line number as `prompt_id`.
    #[arg(long)]
    prompts_file: Option<std::path::PathBuf>,
    /// Samples to generate.
    #[arg(long, default_value_t = 1)]
    samples: u32,
    /// Seed of the first sample; sample i uses seed + i.
    #[arg(long, default_value_t = 0)]
    seed: u32,
    /// Print JSON lines.
    #[arg(long)]
    json: bool,
}

/// `driftwatch generate`.
pub async fn run(a: GenerateArgs) -> Result<()> {
    if a.samples == 0 {
        bail!("--samples must be at least 1");
    }
    let prompts: Vec<(String, String)> = match (&a.prompt, &a.prompts_file) {
        (Some(p), _) => vec![("cli".into(), p.clone())],
        (None, Some(path)) => read_prompts(path)?,
        (None, None) => bail!("give --prompt or --prompts-file"),
    };
    let engine = a.model.engine()?;
    let jobs = prompts
        .iter()
        .flat_map(|(id, prompt)| {
            (0..a.samples).map(move |i| Job {
                prompt_id: id.clone(),
                prompt: prompt.clone(),
                sample_index: i,
                seed: a.seed.wrapping_add(i),
            })
        })
        .collect();
    let req = GenerationRequest { model: a.model.spec()?, sampling: a.sampling.params(), jobs };
    let mut stream = engine.submit(req);
    let mut out = std::io::stdout().lock();
    let mut samples = Vec::new();
    while let Some(ev) = stream.next().await {
        match ev {
            EngineEvent::Sample(s) => samples.push(s),
            EngineEvent::Done(r) => {
                r?;
            }
            EngineEvent::Started(_) | EngineEvent::Progress(_) => {}
        }
    }
    samples.sort_by_key(|s| s.job_index);
    for s in samples {
        if a.json {
            let (id, prompt) = &prompts[s.job_index / a.samples as usize];
            let line = json!({
                "prompt_id": id, "prompt": prompt, "sample_index": s.sample_index, "seed": s.seed, "text": s.text,
                "finish_reason": s.finish_reason, "prompt_tokens": s.prompt_tokens,
                "completion_tokens": s.completion_tokens, "error": s.error,
            });
            writeln!(out, "{line}")?;
        } else {
            // The prompt is named only when there are several (a prompts file).
            let which = match a.prompts_file {
                Some(_) => format!("prompt {} · ", prompts[s.job_index / a.samples as usize].0),
                None => String::new(),
            };
            writeln!(
                out,
                "── {which}sample {} · seed {} · {} tokens · {} ──\n{}\n",
                s.sample_index,
                s.seed,
                s.completion_tokens,
                s.finish_reason.as_str(),
                s.text.trim_end()
            )?;
        }
    }
    Ok(())
}

/// The prompts of a file, one a line, each with its 1-based line number as its id.
fn read_prompts(path: &std::path::Path) -> Result<Vec<(String, String)>> {
    let text = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
    let prompts: Vec<(String, String)> = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| ((i + 1).to_string(), l.trim().to_owned()))
        .collect();
    if prompts.is_empty() {
        bail!("{} holds no prompts", path.display());
    }
    Ok(prompts)
}

#[cfg(test)]
mod tests {
    use super::read_prompts;

    #[test]
    fn prompts_file_keeps_line_numbers_and_refuses_an_empty_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("p.txt");
        std::fs::write(&p, "first\n\n  second  \n").unwrap();
        assert_eq!(read_prompts(&p).unwrap(), vec![("1".into(), "first".into()), ("3".into(), "second".into())]);
        std::fs::write(&p, "\n \n").unwrap();
        assert!(read_prompts(&p).unwrap_err().to_string().contains("holds no prompts"));
        assert!(read_prompts(&dir.path().join("absent")).unwrap_err().to_string().contains("cannot read"));
    }
}
