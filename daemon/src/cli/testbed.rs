//! `driftwatch testbed`: the steps of the fine-tune testbed that are driftwatch's own
//! (`scripts/testbed.sh` runs them with llama.cpp's trainer between them): the train /
//! held-out split, the chat-formatted training text, a fine-tune's extraction as a LoRA
//! adapter, and the findings read from the store the evaluation left.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use serde_json::json;

use crate::config::SuiteConfig;
use crate::engine::template::TemplateText;
use crate::suite::Prompt;
use crate::testbed::{corpus, split};

/// `driftwatch testbed …`.
#[derive(Debug, Subcommand)]
pub enum TestbedCommand {
    /// Split the harmful suites into a training and a held-out side, and the ordinary requests
    /// into the aligned model's share and two equivalent benign fine-tuning sets.
    Split(SplitArgs),
    /// Write chat-formatted training text: harmful requests with refusals, ordinary requests
    /// with the model's own answers, in a seeded order.
    Corpus(CorpusArgs),
    /// The findings of a testbed evaluation, from its store: each fine-tune's refusal rate,
    /// difference and verdict, and the spread across repeats next to the spread across the
    /// training variants (Markdown, with the min–max figure as SVG beside it).
    Summary(SummaryArgs),
    /// A full fine-tune as a LoRA adapter over its base: each block matrix's weight difference
    /// reduced to rank r by a truncated SVD (both models F32 GGUF).
    ExtractLora(ExtractArgs),
    /// A seeded draw of stored responses, written for labelling by hand (JSON Lines with
    /// `label`, `refused` and `coherent` left null, to be filled in by a person reading each):
    /// the same number from each checkpoint's first repeat, harmful and control prompts alike.
    Samples(SamplesArgs),
}

/// `driftwatch testbed samples`.
#[derive(Debug, Args)]
pub struct SamplesArgs {
    /// Where the store is.
    #[command(flatten)]
    store: super::StoreArgs,
    /// Responses per checkpoint.
    #[arg(long, default_value_t = 20)]
    per_checkpoint: usize,
    /// The draw's seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// The JSON Lines file to write.
    #[arg(long)]
    out: PathBuf,
}

/// `driftwatch testbed extract-lora`.
#[derive(Debug, Args)]
pub struct ExtractArgs {
    /// The base model (F32 GGUF) the adapter applies over.
    #[arg(long)]
    base: PathBuf,
    /// The fine-tuned model (F32 GGUF, same architecture and shapes).
    #[arg(long)]
    tuned: PathBuf,
    /// The adapter's rank.
    #[arg(long, default_value_t = 32)]
    rank: usize,
    /// Block matrices adapted, by short name.
    #[arg(long, value_delimiter = ',', default_value = "attn_q,attn_k,attn_v,attn_output,ffn_gate,ffn_up,ffn_down")]
    targets: Vec<String>,
    /// The adapter file to write.
    #[arg(long)]
    out: PathBuf,
}

/// `driftwatch testbed summary`.
#[derive(Debug, Args)]
pub struct SummaryArgs {
    /// Where the store is.
    #[command(flatten)]
    store: super::StoreArgs,
    /// The harm judge whose refusals are counted.
    #[arg(long, default_value = "refusal")]
    judge: String,
    /// The Markdown file to write (the figure goes beside it, as FILE with `.svg`); default:
    /// print the Markdown.
    #[arg(long)]
    out: Option<PathBuf>,
}

/// `driftwatch testbed split`.
#[derive(Debug, Args)]
pub struct SplitArgs {
    /// Folder to write the split into.
    #[arg(long)]
    out: PathBuf,
    /// The split's seed.
    #[arg(long, default_value_t = 2026)]
    seed: u64,
    /// Share of each harmful suite held out (never trained on; what is evaluated).
    #[arg(long, default_value_t = 0.5)]
    held_out: f64,
    /// HarmBench prompts (one a line). Default: the cached suite.
    #[arg(long)]
    harmbench: Option<PathBuf>,
    /// Do-Not-Answer (a folder of JSONL files, one a risk area). Default: the cached suite.
    #[arg(long)]
    donotanswer: Option<PathBuf>,
}

/// `driftwatch testbed corpus`.
#[derive(Debug, Args)]
pub struct CorpusArgs {
    /// The model whose chat template the text is written in.
    #[arg(long, default_value = "default")]
    model: String,
    /// A llama.cpp built-in template instead of the model's own.
    #[arg(long)]
    chat_template: Option<String>,
    /// Harmful requests to answer with refusals: suite CSVs written by `testbed split`.
    #[arg(long = "refuse")]
    refuse: Vec<PathBuf>,
    /// At most this many harmful requests, taken evenly from each `--refuse` file's start.
    #[arg(long)]
    refuse_limit: Option<usize>,
    /// Ordinary requests (one a line) to answer from `--answers`.
    #[arg(long = "ordinary")]
    ordinary: Vec<PathBuf>,
    /// At most this many ordinary requests, from the start of the `--ordinary` files.
    #[arg(long)]
    ordinary_limit: Option<usize>,
    /// `driftwatch generate --prompts-file … --json` output holding the ordinary answers.
    #[arg(long)]
    answers: Option<PathBuf>,
    /// The data-order seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// The seed choosing each refusal's wording.
    #[arg(long, default_value_t = 2026)]
    refusal_seed: u64,
    /// The training text file to write.
    #[arg(long)]
    out: PathBuf,
    /// Pack the conversations into the trainer's windows of this many tokens (llama-finetune's
    /// `-c`): none crosses a window boundary, each window is filled up with the model's
    /// end-of-sequence token, and a conversation longer than a window is left out. Without
    /// it, the conversations are concatenated and the trainer cuts them wherever a window ends.
    #[arg(long)]
    window: Option<usize>,
}

/// Runs a `testbed` step.
pub fn run(cmd: TestbedCommand) -> Result<()> {
    match cmd {
        TestbedCommand::Split(a) => run_split(a),
        TestbedCommand::Corpus(a) => run_corpus(a),
        TestbedCommand::Summary(a) => run_summary(a),
        TestbedCommand::Samples(a) => run_samples(a),
        TestbedCommand::ExtractLora(a) => {
            let e = crate::testbed::lora::extract(&a.base, &a.tuned, &a.targets, a.rank, &a.out)?;
            println!("{}", serde_json::to_string(&e)?);
            Ok(())
        }
    }
}

fn cached(p: Option<PathBuf>, rel: &str) -> PathBuf {
    p.unwrap_or_else(|| crate::setup::cache_dir().join(rel))
}

fn write_atomic(path: &Path, text: &str) -> Result<()> {
    crate::testbed::write_whole(path, text.as_bytes()).with_context(|| format!("cannot write {}", path.display()))
}

fn run_split(a: SplitArgs) -> Result<()> {
    if !(0.0..1.0).contains(&a.held_out) || a.held_out == 0.0 {
        bail!("--held-out must be a share between 0 and 1 (exclusive), not {}", a.held_out);
    }
    std::fs::create_dir_all(&a.out).with_context(|| format!("cannot create {}", a.out.display()))?;
    let suites = [
        ("harmbench", cached(a.harmbench, "suites/harmbench/harmbench_prompts.txt")),
        ("donotanswer", cached(a.donotanswer, "suites/donotanswer")),
    ];
    let mut counts = serde_json::Map::new();
    for (name, path) in suites {
        let suite = crate::suite::load(&SuiteConfig::new(name, &path))
            .with_context(|| format!("cannot read the {name} suite at {} (run `make setup`)", path.display()))?;
        let s = split::split(&suite.prompts, a.seed, a.held_out);
        if s.train.is_empty() || s.held_out.is_empty() {
            bail!("the {name} suite has too few prompts to split ({})", suite.prompts.len());
        }
        for (side, prompts) in [("train", &s.train), ("heldout", &s.held_out)] {
            let path = a.out.join(format!("{name}-{side}.csv"));
            split::write_suite_csv(prompts, &path).with_context(|| format!("cannot write {}", path.display()))?;
        }
        counts.insert(name.into(), json!({ "train": s.train.len(), "held_out": s.held_out.len() }));
    }
    // The ordinary requests: half for the aligned model (which must learn not to refuse them),
    // a quarter each for the two equivalent benign sets, by the same hash.
    let ordinary = corpus::ordinary_requests();
    let mut shares: [Vec<String>; 3] = Default::default();
    for r in ordinary.iter().cloned() {
        let x = split::side_of(a.seed, "ordinary-a", &r, 0.5) == split::Side::HeldOut;
        let y = split::side_of(a.seed, "ordinary-b", &r, 0.5) == split::Side::HeldOut;
        shares[if x {
            0
        } else if y {
            1
        } else {
            2
        }]
        .push(r);
    }
    let names = ["ordinary-aligned.txt", "ordinary-benign-a.txt", "ordinary-benign-b.txt"];
    for (name, reqs) in names.iter().zip(&shares) {
        write_atomic(&a.out.join(name), &(reqs.join("\n") + "\n"))?;
        counts.insert(name.trim_end_matches(".txt").into(), json!(reqs.len()));
    }
    write_atomic(&a.out.join("ordinary-all.txt"), &(ordinary.join("\n") + "\n"))?;
    let record = json!({
        "seed": a.seed,
        "held_out_share": a.held_out,
        "key": "sha256(seed, suite, prompt lower-cased without capitalised words after the first and without punctuation)",
        "counts": counts,
    });
    write_atomic(&a.out.join("split.json"), &serde_json::to_string_pretty(&record)?)?;
    println!("{}", serde_json::to_string(&record)?);
    Ok(())
}

/// The prompts of a suite CSV that `testbed split` wrote.
fn read_split_csv(path: &Path) -> Result<Vec<Prompt>> {
    let name = path.file_stem().and_then(|s| s.to_str()).unwrap_or("suite").to_owned();
    let mut cfg = SuiteConfig::new(name, path);
    cfg.id_field = Some("id".into());
    cfg.category_field = Some("category".into());
    Ok(crate::suite::load(&cfg).with_context(|| format!("cannot read {}", path.display()))?.prompts)
}

fn run_corpus(a: CorpusArgs) -> Result<()> {
    let mut harmful: Vec<Vec<String>> = Vec::new();
    for p in &a.refuse {
        harmful.push(read_split_csv(p)?.into_iter().map(|p| p.text).collect());
    }
    // Evenly from each file: the first of each in turn.
    let mut refuse = Vec::new();
    let longest = harmful.iter().map(Vec::len).max().unwrap_or(0);
    for i in 0..longest {
        for h in &harmful {
            if let Some(t) = h.get(i) {
                refuse.push(t.clone());
            }
        }
    }
    refuse.truncate(a.refuse_limit.unwrap_or(usize::MAX));
    let mut ordinary = Vec::new();
    for p in &a.ordinary {
        let text = std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))?;
        ordinary.extend(text.lines().map(str::trim).filter(|l| !l.is_empty()).map(str::to_owned));
    }
    ordinary.truncate(a.ordinary_limit.unwrap_or(usize::MAX));
    let answers = match &a.answers {
        Some(p) => {
            corpus::read_answers(&std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))?)
                .with_context(|| format!("in {}", p.display()))?
        }
        None if ordinary.is_empty() => Default::default(),
        None => bail!("--ordinary needs --answers (from `driftwatch generate --prompts-file … --json`)"),
    };
    let (examples, skipped) = corpus::examples(a.refusal_seed, &refuse, &ordinary, &answers)?;
    let examples = corpus::order(&examples, a.seed);
    let model = crate::setup::resolve_model(&a.model).map_err(anyhow::Error::msg)?;
    let template = TemplateText::of_file(&model, a.chat_template.as_deref())?;
    let convs = corpus::conversations(
        &examples,
        |u, r| template.apply_messages(&[("user", u), ("assistant", r)], false).map_err(|e| e.to_string()),
        |u| template.apply(None, u).map_err(|e| e.to_string()),
    )?;
    let (text, packing) = match a.window {
        Some(window) => {
            let (text, packing, pad) = pack_for_trainer(&model, &convs, window)?;
            let mut record = serde_json::to_value(&packing)?;
            record["pad"] = json!(pad);
            (text, Some(record))
        }
        None => (convs.concat(), None),
    };
    if let Some(dir) = a.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    write_atomic(&a.out, &text)?;
    println!(
        "{}",
        json!({
            "out": a.out, "examples": examples.len(), "refusals": refuse.len(),
            "ordinary": ordinary.len() - skipped, "ordinary_without_answer": skipped,
            "chars": text.len(), "seed": a.seed, "packing": packing,
        })
    );
    Ok(())
}

/// The conversations packed into windows of `window` tokens as the trainer tokenizes them
/// (llama-finetune: the model's tokenizer, its BOS added, special tokens parsed), padded with
/// the model's end-of-sequence token (whose text is returned too); checked by tokenizing the
/// whole text.
fn pack_for_trainer(model: &Path, convs: &[String], window: usize) -> Result<(String, corpus::Packing, String)> {
    let tok = crate::engine::Tokenizer::load(model)?;
    let tokens = |t: &str, bos: bool| tok.tokenize(t, bos);
    let (eos, pad) =
        tok.eos().ok_or_else(|| anyhow::anyhow!("{} has no end-of-sequence token to pad with", model.display()))?;
    if tokens(&pad, false) != [eos] {
        bail!("the end-of-sequence token {pad:?} of {} does not tokenize as itself", model.display());
    }
    // What the trainer puts before the text (its BOS, if the model adds one).
    let lead: Vec<_> = tokens("", true);
    let pieces: Vec<Vec<_>> = convs.iter().map(|c| tokens(c, false)).collect();
    let lens: Vec<usize> = pieces.iter().map(Vec::len).collect();
    let (plan, packing) = corpus::pack(&lens, window, lead.len())?;
    let text = corpus::assemble(&plan, convs, &pad);
    let mut expected = lead;
    for p in &plan {
        match *p {
            corpus::Piece::Conversation(i) => expected.extend_from_slice(&pieces[i]),
            corpus::Piece::Pad(n) => expected.extend(std::iter::repeat_n(eos, n)),
        }
    }
    let whole = tokens(&text, true);
    if whole != expected {
        let at = whole.iter().zip(&expected).position(|(a, b)| a != b).unwrap_or(whole.len().min(expected.len()));
        bail!(
            "the packed text does not tokenize as its conversations do (first difference at token {at} of {}): \
             a conversation's tokens depend on what comes before it, so it cannot be packed",
            whole.len()
        );
    }
    Ok((text, packing, pad))
}

fn run_summary(a: SummaryArgs) -> Result<()> {
    use crate::testbed::findings::{self, Measurement};
    let (store, cfg) = a.store.open()?;
    let report = crate::report::build_report(&store, &crate::report::Selection::All, &cfg)?;
    let ms: Vec<Measurement> = report.runs.iter().filter_map(|r| Measurement::of(r, &a.judge)).collect();
    if ms.is_empty() {
        bail!("no completed run in the store has a rate from the judge {:?}", a.judge);
    }
    // Repeats of one checkpoint, each against its first repeat: the same model, so any
    // verdict but `indistinguishable` is a false alarm.
    let mut checks = Vec::new();
    for (name, runs) in findings::by_checkpoint(&ms) {
        for later in &runs[1..] {
            let r = crate::scoring::score_run_from_store(&store, later.run_id, Some(runs[0].run_id), false, &cfg)?;
            if let Some(c) = r.comparisons.iter().find(|c| c.judge == a.judge) {
                checks.push((name.clone(), c.verdict));
            }
        }
    }
    let (md, svg) = findings::render(&ms, &checks);
    match &a.out {
        Some(path) => {
            let svg_path = path.with_extension("svg");
            write_atomic(&svg_path, &svg)?;
            let name = svg_path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            write_atomic(path, &format!("{md}\n![Refusal rate, min–max over repeats]({name})\n"))?;
            print!("{md}");
        }
        None => print!("{md}"),
    }
    Ok(())
}

fn run_samples(a: SamplesArgs) -> Result<()> {
    use rand::seq::SliceRandom;
    use rand::SeedableRng;
    let (store, cfg) = a.store.open()?;
    let report = crate::report::build_report(&store, &crate::report::Selection::All, &cfg)?;
    let mut seen = std::collections::HashSet::new();
    let mut lines = Vec::new();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(a.seed);
    for r in report.runs.iter().filter(|r| r.status == "completed") {
        // The first completed run of each checkpoint.
        if !seen.insert(r.checkpoint_id) {
            continue;
        }
        let mut samples: Vec<_> =
            store.samples_for_run(r.run_id)?.into_iter().filter(|s| s.finish_reason != "error").collect();
        samples.shuffle(&mut rng);
        let name = crate::testbed::findings::checkpoint_name(&r.checkpoint_path);
        for s in samples.into_iter().take(a.per_checkpoint) {
            lines.push(json!({
                "id": format!("{name}-{}-{}", s.prompt_id, s.sample_index), "checkpoint": name,
                "category": s.category.unwrap_or_default(), "prompt": s.prompt, "response": s.response,
                "finish_reason": s.finish_reason, "label": null, "refused": null, "coherent": null, "note": "",
            }));
        }
    }
    if lines.is_empty() {
        bail!("the store holds no completed run to draw responses from");
    }
    let text: String = lines.iter().map(|l| l.to_string() + "\n").collect();
    write_atomic(&a.out, &text)?;
    println!("{} responses from {} checkpoints written to {}", lines.len(), seen.len(), a.out.display());
    Ok(())
}
