//! driftwatch: the daemon's command line (judge-plugin commands wired here for now).

use std::io::Write;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use driftwatch::judge::cli::{self as judge_cli, JudgeArgs, PluginCommand};

#[derive(Debug, Parser)]
#[command(name = "driftwatch", version, about = "Safety-regression evaluation of fine-tuned GGUF checkpoints")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Judge plugins: scaffold and check.
    #[command(subcommand)]
    Plugin(PluginCommand),
    /// Score a JSONL file of samples with one judge plugin.
    Judge(JudgeArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    match cli.command {
        Command::Plugin(cmd) => judge_cli::run_plugin_command(&cmd, &mut out).context("plugin command failed")?,
        Command::Judge(args) => {
            // The judge model (for LLM-as-judge plugins) is wired in with the engine.
            judge_cli::judge_file(&args, None, &mut out)
                .with_context(|| format!("judging {} with {}", args.input.display(), args.plugin.display()))?;
        }
    }
    out.flush()?;
    Ok(())
}
