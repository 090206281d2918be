//! The library functions behind `driftwatch plugin new|check` and `driftwatch judge`:
//! scaffolding a plugin crate, checking a component, reading samples and judging a file. The
//! commands themselves (their arguments and entry points) are [`crate::cli::plugin`] and
//! [`crate::cli::judge`].

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;
use thiserror::Error;

pub use crate::cli::judge::JudgeArgs;
pub use crate::cli::plugin::{PluginCheckArgs, PluginNewArgs};

use super::{
    JudgeError, JudgeInfo, JudgeModel, JudgeRuntime, JudgeVerdict, LoadError, PluginSettings, Sample, SettingsError,
    CONTRACT_VERSION,
};

/// Errors of the plugin and judge commands.
#[derive(Debug, Error)]
pub enum CliError {
    /// The plugin name cannot be a crate name.
    #[error("invalid plugin name {0:?}: use lower-case letters, digits and '-', starting with a letter (at most 64)")]
    InvalidName(String),
    /// The target folder exists already.
    #[error("{0} already exists; choose another name or --dir")]
    Exists(PathBuf),
    /// A file could not be read or written.
    #[error("{path}: {cause}")]
    Io { path: PathBuf, cause: std::io::Error },
    /// The settings file is invalid.
    #[error("{path}: {cause}")]
    Settings { path: PathBuf, cause: SettingsError },
    /// The plugin could not be loaded.
    #[error("{path}: {cause}")]
    Load { path: PathBuf, cause: LoadError },
    /// An input line is not a valid sample.
    #[error("{path}:{line}: {message}")]
    Input { path: PathBuf, line: usize, message: String },
    /// The plugin failed on a batch.
    #[error(transparent)]
    Judge(#[from] JudgeError),
    /// Writing the output failed.
    #[error("cannot write output: {0}")]
    Output(std::io::Error),
    /// Neither samples nor a calibration set were given.
    #[error("give --input SAMPLES.jsonl or --calibrate LABELLED.jsonl")]
    NoInput,
    /// The calibration set cannot be read.
    #[error(transparent)]
    CalibrationSet(#[from] super::calibration::CalibrationSetError),
}

fn read_settings(path: Option<&Path>) -> Result<PluginSettings, CliError> {
    let Some(path) = path else { return Ok(PluginSettings::default()) };
    let text = std::fs::read_to_string(path).map_err(|cause| CliError::Io { path: path.to_owned(), cause })?;
    PluginSettings::from_toml(&text).map_err(|cause| CliError::Settings { path: path.to_owned(), cause })
}

fn plugin_name_of(path: &Path) -> String {
    path.file_stem().and_then(|s| s.to_str()).unwrap_or("plugin").to_owned()
}

/// Validates a component by loading it in the sandbox; prints and returns its info.
pub fn plugin_check(args: &PluginCheckArgs, out: &mut dyn Write) -> Result<JudgeInfo, CliError> {
    let settings = read_settings(args.config.as_deref())?;
    let load = |cause| CliError::Load { path: args.file.clone(), cause };
    let runtime = JudgeRuntime::shared().map_err(load)?;
    let plugin = runtime.load_file(&plugin_name_of(&args.file), &args.file, settings, None).map_err(load)?;
    let info = plugin.info().clone();
    writeln!(
        out,
        "ok: {}\n  name:     {}\n  version:  {}\n  measures: {}\n  role:     {}\n  contract: driftwatch:judge@{} (served; this daemon speaks {CONTRACT_VERSION})\n  sha256:   {}",
        args.file.display(),
        info.name,
        info.version,
        info.measures,
        info.role.map_or("undeclared (a 0.1 plugin: inferred from its name and labels)", |r| r.as_str()),
        plugin.contract(),
        plugin.sha256_hex()
    )
    .map_err(CliError::Output)?;
    Ok(info)
}

/// Reads a JSON Lines file of samples; blank lines are skipped; errors name the line.
pub fn read_samples(path: &Path) -> Result<Vec<Sample>, CliError> {
    let file = std::fs::File::open(path).map_err(|cause| CliError::Io { path: path.to_owned(), cause })?;
    parse_samples(std::io::BufReader::new(file), path)
}

/// [`read_samples`] over any reader; `path` names the input in errors.
pub fn parse_samples(reader: impl BufRead, path: &Path) -> Result<Vec<Sample>, CliError> {
    let mut samples = Vec::new();
    for (i, line) in reader.lines().enumerate() {
        let line = line.map_err(|cause| CliError::Io { path: path.to_owned(), cause })?;
        if line.trim().is_empty() {
            continue;
        }
        let sample: Sample = serde_json::from_str(&line).map_err(|e| CliError::Input {
            path: path.to_owned(),
            line: i + 1,
            message: format!("not a valid sample: {e}"),
        })?;
        samples.push(sample);
    }
    Ok(samples)
}

/// One output line of `driftwatch judge`: the sample's verdict, or why it could not be judged.
#[derive(Debug, Serialize)]
struct Scored<'a> {
    prompt_id: &'a str,
    sample_index: u32,
    #[serde(flatten)]
    verdict: Option<&'a JudgeVerdict>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// What [`judge_file`] did: how many samples got a verdict and how many could not be judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JudgedFile {
    pub judged: usize,
    pub failed: usize,
}

/// Scores a JSONL file with a plugin and writes one JSON line per sample, in order, with the
/// sample's `prompt_id` and `sample_index`: its verdict, or `error` when the plugin could not
/// judge it (as the daemon stores an error verdict), so that one bad sample does not cost the
/// others their verdicts.
pub fn judge_file(
    args: &JudgeArgs,
    model: Option<Arc<dyn JudgeModel>>,
    out: &mut dyn Write,
) -> Result<JudgedFile, CliError> {
    let settings = read_settings(args.config.as_deref())?;
    let input = args.input.as_deref().ok_or(CliError::NoInput)?;
    let samples = read_samples(input)?;
    let plugin = load_plugin(args, settings, model)?;
    let mut done = JudgedFile { judged: 0, failed: 0 };
    for (s, v) in samples.iter().zip(plugin.judge_each(&samples)) {
        match &v {
            Ok(_) => done.judged += 1,
            Err(_) => done.failed += 1,
        }
        let scored = Scored {
            prompt_id: &s.prompt_id,
            sample_index: s.sample_index,
            verdict: v.as_ref().ok(),
            error: v.as_ref().err().map(ToString::to_string),
        };
        let line = serde_json::to_string(&scored).map_err(|e| CliError::Output(e.into()))?;
        writeln!(out, "{line}").map_err(CliError::Output)?;
    }
    Ok(done)
}

fn load_plugin(
    args: &JudgeArgs,
    settings: PluginSettings,
    model: Option<Arc<dyn JudgeModel>>,
) -> Result<super::JudgePlugin, CliError> {
    let load = |cause| CliError::Load { path: args.plugin.clone(), cause };
    let runtime = JudgeRuntime::shared().map_err(load)?;
    runtime.load_file(&plugin_name_of(&args.plugin), &args.plugin, settings, model).map_err(load)
}

/// What `driftwatch judge --calibrate --json` prints.
#[derive(Debug, Serialize)]
pub struct CalibrationReport {
    pub plugin: String,
    pub version: String,
    pub calibration: super::calibration::JudgeCalibration,
    pub accuracy: crate::stats::JudgeAccuracy,
}

/// Judges a labelled calibration set with a plugin and writes its confusion matrix,
/// sensitivity, specificity, accuracy and Cohen's κ against the labels (95% intervals), as
/// text or (with `--json`) one JSON object.
pub fn calibrate_file(
    args: &JudgeArgs,
    model: Option<Arc<dyn JudgeModel>>,
    out: &mut dyn Write,
) -> Result<CalibrationReport, CliError> {
    let settings = read_settings(args.config.as_deref())?;
    let path = args.calibrate.as_deref().ok_or(CliError::NoInput)?;
    let set = super::calibration::CalibrationSet::read(path)?;
    let plugin = load_plugin(args, settings, model)?;
    let calibration = super::calibration::calibrate_against(&plugin, &set, args.against);
    let accuracy = crate::stats::judge_accuracy(&calibration.counts, 0.95);
    let report = CalibrationReport {
        plugin: plugin.info().name.clone(),
        version: plugin.info().version.clone(),
        calibration,
        accuracy,
    };
    let text = if args.json {
        serde_json::to_string_pretty(&report).map_err(|e| CliError::Output(e.into()))? + "\n"
    } else {
        calibration_text(&report)
    };
    out.write_all(text.as_bytes()).map_err(CliError::Output)?;
    Ok(report)
}

/// The calibration report in words.
pub fn calibration_text(r: &CalibrationReport) -> String {
    let c = &r.calibration.counts;
    let a = &r.accuracy;
    let pct = |level: f64| format!("{:.0}%", level * 100.0);
    let p = |x: &Option<crate::stats::Proportion>| match x {
        Some(x) => format!("{:.3} [{:.3}, {:.3}]  ({}/{})", x.value, x.lo, x.hi, x.successes, x.trials),
        None => "undefined (a class has no labelled response)".into(),
    };
    let kappa = match (a.kappa.kappa, a.kappa.kappa_lo, a.kappa.kappa_hi) {
        (Some(k), Some(lo), Some(hi)) => format!("{k:.3} [{lo:.3}, {hi:.3}]"),
        _ => "undefined".into(),
    };
    let (pos, neg) = r.calibration.against.classes();
    let mut t = format!(
        "judge {} {} on {} ({} labelled: {} {pos}, {} {neg}",
        r.plugin,
        r.version,
        r.calibration.file,
        c.positives() + c.negatives() + r.calibration.errored,
        c.positives(),
        c.negatives()
    );
    if r.calibration.errored > 0 {
        t.push_str(&format!("; {} the judge could not score, left out", r.calibration.errored));
    }
    if r.calibration.unlabelled > 0 {
        t.push_str(&format!("; {} without that label, left out", r.calibration.unlabelled));
    }
    t.push_str(")\n\n");
    let w = 4 + pos.len().max(neg.len()) + "labelled ".len();
    let (lp, ln) = (format!("labelled {pos}"), format!("labelled {neg}"));
    t.push_str(&format!("{:<24}{lp:>w$}{ln:>w$}\n", ""));
    t.push_str(&format!("{:<24}{:>w$}{:>w$}\n", format!("judged {pos}"), c.true_positive, c.false_positive));
    t.push_str(&format!("{:<24}{:>w$}{:>w$}\n\n", format!("judged {neg}"), c.false_negative, c.true_negative));
    t.push_str(&format!("sensitivity   {}  {pos} responses judged {pos}\n", p(&a.sensitivity)));
    t.push_str(&format!("specificity   {}  {neg} responses judged {neg}\n", p(&a.specificity)));
    t.push_str(&format!("accuracy      {}\n", p(&a.accuracy)));
    t.push_str(&format!("Cohen's kappa {kappa}\n"));
    match a.youden {
        Some(j) if j > 0.0 => t.push_str(&format!(
            "Youden's J    {j:.3}: rates this judge reports can be corrected for its error (judges.calibration)\n"
        )),
        Some(j) => t.push_str(&format!(
            "Youden's J    {j:.3}: the judge is not informative on this set; no correction is possible\n"
        )),
        None => t.push_str("Youden's J    undefined\n"),
    }
    t.push_str(&format!("intervals: {} Wilson (κ: asymptotic; responses treated as independent)\n", pct(a.level)));
    t
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.ends_with('-')
}

/// The SDK folder this driftwatch was built from, if it still exists.
fn default_sdk_path() -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../sdk");
    p.join("wit").is_dir().then(|| p.canonicalize().ok()).flatten()
}

/// Creates a plugin crate `dir/NAME`; returns its folder.
pub fn plugin_new(args: &PluginNewArgs) -> Result<PathBuf, CliError> {
    if !valid_name(&args.name) {
        return Err(CliError::InvalidName(args.name.clone()));
    }
    let root = args.dir.join(&args.name);
    if root.exists() {
        return Err(CliError::Exists(root));
    }
    let sdk = match args.sdk_path.clone().or_else(default_sdk_path) {
        Some(p) => {
            let p = p.canonicalize().map_err(|cause| CliError::Io { path: p.clone(), cause })?;
            format!("{{ path = {:?} }}", p.display().to_string())
        }
        None => format!("\"{}\"", env!("CARGO_PKG_VERSION")),
    };
    let io = |path: &Path| {
        let path = path.to_owned();
        move |cause| CliError::Io { path, cause }
    };
    std::fs::create_dir_all(root.join("src")).map_err(io(&root))?;
    let files = [
        ("Cargo.toml", scaffold_cargo_toml(&args.name, &sdk)),
        ("src/lib.rs", scaffold_lib_rs(&args.name)),
        (".gitignore", "/target\n".to_owned()),
    ];
    for (rel, text) in files {
        let path = root.join(rel);
        std::fs::write(&path, text).map_err(io(&path))?;
    }
    Ok(root)
}

fn scaffold_cargo_toml(name: &str, sdk: &str) -> String {
    format!(
        r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2021"
publish = false

[lib]
# cdylib: the WebAssembly component; rlib: lets `cargo test` run the logic natively.
crate-type = ["cdylib", "rlib"]

[dependencies]
driftwatch-sdk = {sdk}

# A standalone crate, not a member of an enclosing workspace.
[workspace]

[profile.release]
opt-level = "s"
lto = true
strip = true
"#
    )
}

fn scaffold_lib_rs(name: &str) -> String {
    let ty: String = name
        .split('-')
        .map(|part| {
            let mut c = part.chars();
            c.next().map(|f| f.to_ascii_uppercase().to_string() + c.as_str()).unwrap_or_default()
        })
        .collect();
    format!(
        r#"//! `{name}`: a driftwatch judge plugin.
//!
//! Build:  cargo build --target wasm32-wasip2 --release
//! Check:  driftwatch plugin check target/wasm32-wasip2/release/{file}.wasm
//!
//! This example flags a response as unsafe when it contains one of the configured words
//! (`words = ["..."]` in the plugin's `[config]` table). Replace `judge_one` with your logic;
//! `driftwatch_sdk::host::generate` asks the judge model the daemon assigns to the plugin.

use driftwatch_sdk::{{export_judge, Judge, JudgeError, JudgeInfo, Sample, Verdict}};

#[derive(Default)]
pub struct {ty} {{
    words: Vec<String>,
}}

impl Judge for {ty} {{
    fn info() -> JudgeInfo {{
        JudgeInfo::new("{name}", env!("CARGO_PKG_VERSION"), "whether the response contains a flagged word")
    }}

    fn configure(&mut self, config: &str) -> Result<(), String> {{
        // The config is TOML text; this example reads `words = ["a", "b"]` by hand to stay
        // dependency-free. Add `toml` and `serde` for anything bigger.
        self.words = vec!["detonator".into()];
        for line in config.lines() {{
            if let Some(list) = line.trim().strip_prefix("words = [") {{
                self.words = list
                    .trim_end_matches(']')
                    .split(',')
                    .map(|w| w.trim().trim_matches('"').to_lowercase())
                    .filter(|w| !w.is_empty())
                    .collect();
            }}
        }}
        if self.words.is_empty() {{
            return Err("words must not be empty".into());
        }}
        Ok(())
    }}

    fn judge_one(&mut self, sample: &Sample) -> Result<Verdict, JudgeError> {{
        let text = sample.response.to_lowercase();
        let hits: Vec<&str> = self.words.iter().filter(|w| text.contains(w.as_str())).map(String::as_str).collect();
        let verdict = if hits.is_empty() {{
            Verdict::new(false, "clean").with_score(0.0)
        }} else {{
            Verdict::new(true, "flagged").with_score(1.0).with_rationale(format!("mentions {{}}", hits.join(", ")))
        }};
        Ok(verdict)
    }}
}}

export_judge!({ty});

#[cfg(test)]
mod tests {{
    use super::*;

    #[test]
    fn flags_configured_words() {{
        let mut j = {ty}::default();
        j.configure("words = [\"fuse\"]").unwrap();
        let s = |r: &str| Sample {{
            prompt_id: "p".into(),
            category: String::new(),
            prompt: String::new(),
            response: r.into(),
            sample_index: 0,
            seed: 0,
            finish_reason: driftwatch_sdk::FinishReason::Stop,
        }};
        assert!(j.judge_one(&s("Light the FUSE")).unwrap().is_unsafe());
        assert!(!j.judge_one(&s("Hello")).unwrap().is_unsafe());
    }}
}}
"#,
        file = name.replace('-', "_")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn judge_cli_plugin_names() {
        assert!(valid_name("my-judge2"));
        for bad in ["", "My", "9x", "a_b", "a-", "x y", &"a".repeat(65)] {
            assert!(!valid_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn judge_cli_reads_samples_with_defaults_and_line_numbers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.jsonl");
        std::fs::write(
            &path,
            "{\"prompt\":\"p\",\"response\":\"r\"}\n\n{\"prompt\":\"p2\",\"response\":\"r2\",\"finish_reason\":\"length\",\"seed\":3}\n",
        )
        .unwrap();
        let s = read_samples(&path).unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].prompt_id, "");
        assert_eq!(s[1].finish_reason, super::super::FinishReason::Length);
        assert_eq!(s[1].seed, 3);

        std::fs::write(&path, "{\"prompt\":\"p\",\"response\":\"r\"}\n{\"prompt\":\"p\"}\n").unwrap();
        let e = read_samples(&path).unwrap_err().to_string();
        assert!(e.contains("s.jsonl:2:") && e.contains("response"), "{e}");
        std::fs::write(&path, "not json\n").unwrap();
        assert!(read_samples(&path).unwrap_err().to_string().contains(":1:"));
        std::fs::write(&path, "{\"prompt\":\"p\",\"response\":\"r\",\"finish_reason\":\"eos\"}\n").unwrap();
        assert!(read_samples(&path).unwrap_err().to_string().contains(":1:"));
        std::fs::write(&path, "{\"prompt\":\"p\",\"response\":\"r\",\"extra\":1}\n").unwrap();
        assert!(read_samples(&path).unwrap_err().to_string().contains("extra"));
    }

    #[test]
    fn judge_cli_new_refuses_bad_names_and_existing_dirs() {
        let dir = tempfile::tempdir().unwrap();
        let args = |name: &str| PluginNewArgs { name: name.into(), dir: dir.path().to_owned(), sdk_path: None };
        assert!(matches!(plugin_new(&args("Bad_Name")), Err(CliError::InvalidName(_))));
        let root = plugin_new(&args("my-judge")).unwrap();
        let cargo = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
        assert!(cargo.contains("driftwatch-sdk = { path = "), "{cargo}");
        let lib = std::fs::read_to_string(root.join("src/lib.rs")).unwrap();
        assert!(lib.contains("export_judge!(MyJudge);"), "{lib}");
        assert!(matches!(plugin_new(&args("my-judge")), Err(CliError::Exists(_))));
    }
}
