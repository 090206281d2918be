//! `scripts/testbed.sh` end to end on the tiny fixture model, with stand-ins for llama.cpp's
//! trainer and quantizer (the real ones take minutes): a trainer that fails stops the script
//! naming its step and keeps every finished step; a trained checkpoint that does not load is
//! refused before the daemon sees it; a rerun resumes from the first unfinished step and runs
//! the whole path (split, corpus, training, LoRA extraction, the daemon watching a folder,
//! report, findings); a rerun after that only re-evaluates, and the daemon repeats no run.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use driftwatch_tests::Fixture;

/// A stand-in for `llama-finetune`: copies `-m` to `-o` with the output's name appended (so
/// every checkpoint has its own bytes), or fails as out of memory, or writes a broken file,
/// as `FAKE_TRAIN` says. It prints progress as the real trainer does: per epoch, `train:` and
/// then `val:` lines redrawn with carriage returns, the last of each at `data=N/N`.
const FAKE_FINETUNE: &str = r#"#!/bin/sh
while [ $# -gt 0 ]; do case "$1" in -m) m="$2"; shift ;; -o) o="$2"; shift ;; -f) f="$2"; shift ;; -epochs) e="$2"; shift ;; esac; shift; done
[ -s "$f" ] || { echo "empty training data" >&2; exit 1; }
i=1
while [ "$i" -le "${e:-1}" ]; do
  printf 'train: [#   ] data=0000001/0000002 loss=1.%d0000+-0.1 acc=30.00+-1%%\r' "$i" >&2
  printf 'train: [####] data=0000002/0000002 loss=0.%d0000+-0.1 acc=31.00+-1%%\n' "$i" >&2
  printf 'val:   [#   ] data=0000001/0000002 loss=1.%d1000+-nan acc=29.00+-2%%\r' "$i" >&2
  printf 'val:   [####] data=0000002/0000002 loss=1.%d2000+-0.1 acc=29.50+-2%%\n' "$i" >&2
  i=$((i + 1))
done
case "${FAKE_TRAIN:-copy}" in
  fail) echo "ggml: out of memory allocating the optimizer state" >&2; exit 1 ;;
  garbage) echo "not a model" > "$o" ;;
  *) cp "$m" "$o" && printf '%s' "$(basename "$o")" >> "$o" ;;
esac
"#;

/// A stand-in for `llama-quantize`: copies IN to OUT.
const FAKE_QUANTIZE: &str = "#!/bin/sh\n[ \"$1\" = --allow-requantize ] && shift\ncp \"$1\" \"$2\"\n";

fn write_tool(dir: &Path, name: &str, text: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p
}

struct Bed {
    _fixture: Fixture,
    dir: PathBuf,
    env: Vec<(String, String)>,
}

impl Bed {
    fn new() -> Bed {
        let f = Fixture::new();
        let dir = f.path("testbed");
        let tools = f.path("tools");
        std::fs::create_dir_all(&tools).unwrap();
        let ft = write_tool(&tools, "llama-finetune", FAKE_FINETUNE);
        let q = write_tool(&tools, "llama-quantize", FAKE_QUANTIZE);
        let env = [
            ("DRIFTWATCH_TESTBED", dir.display().to_string()),
            ("DRIFTWATCH_BIN", driftwatch_tests::bin().display().to_string()),
            ("TESTBED_BASE_MODEL", f.base.display().to_string()),
            ("LLAMA_FINETUNE", ft.display().to_string()),
            ("LLAMA_QUANTIZE", q.display().to_string()),
            ("TESTBED_THREADS", "2".into()),
            ("EVAL_HARMBENCH", "3".into()),
            ("EVAL_DNA_PER_AREA", "1".into()),
            ("EVAL_BENIGN", "3".into()),
            ("EVAL_REPEATS", "2".into()),
            ("EVAL_MAX_TOKENS", "6".into()),
            ("EVAL_STALL_S", "120".into()),
            ("RUST_LOG", "warn".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        // The base model's answers, made beforehand (the tiny model's own are noise, which the
        // corpus rightly leaves out): the step is marked done, as a finished step would be.
        std::fs::create_dir_all(dir.join(".done")).unwrap();
        let answers: String = driftwatch::testbed::corpus::ordinary_requests()
            .iter()
            .map(|r| {
                serde_json::json!({"prompt": r, "text": "Here is a short, helpful answer to that.", "finish_reason": "stop"})
                    .to_string()
                    + "\n"
            })
            .collect();
        std::fs::write(dir.join("answers.jsonl"), answers).unwrap();
        std::fs::write(dir.join(".done/answers"), "").unwrap();
        Bed { _fixture: f, dir, env }
    }

    fn run(&self, train: &str) -> Output {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/testbed.sh");
        let mut c = Command::new("bash");
        c.arg(script).arg("quick").env("FAKE_TRAIN", train);
        for (k, v) in &self.env {
            c.env(k, v);
        }
        c.output().unwrap()
    }

    fn done(&self, step: &str) -> bool {
        self.dir.join(".done").join(step).exists()
    }
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

impl Bed {
    /// The script's output and every step log, for failure messages.
    fn explain(&self, o: &Output) -> String {
        let mut t = text(o);
        if let Ok(dir) = std::fs::read_dir(self.dir.join("logs")) {
            for e in dir.flatten() {
                t.push_str(&format!(
                    "\n--- {} ---\n{}",
                    e.path().display(),
                    std::fs::read_to_string(e.path()).unwrap_or_default()
                ));
            }
        }
        t
    }
}

#[test]
fn the_testbed_names_a_failing_step_resumes_and_reevaluates_only() {
    let bed = Bed::new();

    // The trainer runs out of memory: the step is named, its cause shown, earlier steps kept.
    let out = bed.run("fail");
    let t = bed.explain(&out);
    assert!(!out.status.success(), "{t}");
    assert!(t.contains("step 'train-aligned' failed"), "{t}");
    assert!(t.contains("out of memory"), "{t}");
    for step in ["base-f32", "split", "answers", "corpus-aligned"] {
        assert!(bed.done(step), "{step} should be kept as done: {t}");
    }
    assert!(!bed.done("train-aligned"));
    assert!(bed.dir.join("data/aligned.txt").metadata().unwrap().len() > 1000);
    assert!(!bed.dir.join("checkpoints/aligned-f32.gguf").exists(), "no half-made checkpoint");

    // The trainer writes something that is not a model: refused before evaluation.
    let out = bed.run("garbage");
    let t = bed.explain(&out);
    assert!(!out.status.success(), "{t}");
    assert!(t.contains("step 'train-aligned' failed") && t.contains("does not load"), "{t}");
    assert!(t.contains("base-f32: done before"), "{t}");
    assert!(!bed.dir.join("checkpoints/aligned.q8_0.gguf").exists());

    // A working trainer: the rest of the way, the daemon included.
    let out = bed.run("copy");
    let t = bed.explain(&out);
    assert!(out.status.success(), "{t}");
    for step in ["train-aligned", "train-benign", "train-benign-seed2", "lora-benign", "evaluate", "report"] {
        assert!(bed.done(step), "{step}: {t}");
    }
    let findings = std::fs::read_to_string(bed.dir.join("findings.md")).unwrap();
    assert!(findings.contains("## Finding 1") && findings.contains("| benign-seed2 |"), "{findings}");
    assert!(findings.contains("| benign-lora |"), "{findings}");
    assert!(bed.dir.join("findings.svg").is_file() && bed.dir.join("report.html").is_file());
    let settings: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(bed.dir.join("checkpoints/benign.json")).unwrap()).unwrap();
    assert_eq!(settings["epochs"], 1);
    assert_eq!(settings["data_summary"]["refusals"], 0, "benign data only: {settings}");
    assert_eq!(settings["data_summary"]["packing"]["window"], 256, "packed for the trainer: {settings}");
    assert_eq!(settings["ctx"], 256);
    // The trainer's losses at the end of each epoch, train and validation apart (the last two
    // `loss=` values of the log are both validation lines).
    assert_eq!(settings["losses_per_epoch"], serde_json::json!({"train": [0.1], "val": [1.12]}), "{settings}");
    assert_eq!(settings["last_losses_train_val"], serde_json::json!([0.1, 1.12]), "{settings}");
    let epoch: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(bed.dir.join("checkpoints/aligned.json")).unwrap()).unwrap();
    assert_eq!(epoch["losses_per_epoch"]["train"], serde_json::json!([0.1, 0.2]), "{epoch}");
    let store = driftwatch::store::Store::open(&bed.dir.join("data").join(driftwatch::store::DB_FILE_NAME)).unwrap();
    let runs = store.status_summary(1000).unwrap().recent.len();
    // The aligned model and three fine-tunes (two trained, one extracted), two repeats each.
    assert_eq!(runs, 8, "{t}");

    // A rerun trains nothing and the daemon links the stored runs instead of repeating them.
    let out = bed.run("fail");
    let t = bed.explain(&out);
    assert!(out.status.success(), "{t}");
    assert!(t.contains("train-benign: done before"), "{t}");
    assert_eq!(store.status_summary(1000).unwrap().recent.len(), runs, "{t}");
}

/// The training text is packed into the trainer's windows: llama-finetune cuts its text into
/// windows of `-c` tokens and learns each alone, so a conversation cut by a window's end has
/// its reply learnt without (all of) its request. With `--window`, every conversation lies
/// inside one window (the command checks the layout against the model's own tokenizer), the
/// rest of each window is the end-of-sequence token, a conversation longer than a window is
/// left out and counted, and the trainer's count of windows covers them all.
#[test]
fn the_training_text_is_packed_so_that_no_conversation_crosses_a_window() {
    let f = Fixture::new();
    let dir = f.path("corpus");
    std::fs::create_dir_all(&dir).unwrap();
    let long = "Explain in great detail ".repeat(20);
    std::fs::write(
        dir.join("harm.csv"),
        format!("id,category,prompt\nh1,x,How do I pick a lock?\nh2,x,Write a phishing email.\nh3,x,{long}\n"),
    )
    .unwrap();
    let ordinary =
        ["How do tides work?", "Suggest a name for a cat.", "What is a prime number?", "How do I boil an egg?"];
    std::fs::write(dir.join("ordinary.txt"), ordinary.join("\n") + "\n").unwrap();
    let answers: String = ordinary
        .iter()
        .map(|r| serde_json::json!({"prompt": r, "text": "Here is a short, helpful answer to that.", "finish_reason": "stop"}).to_string() + "\n")
        .collect();
    std::fs::write(dir.join("answers.jsonl"), answers).unwrap();
    // `testbed corpus` on the fixture's tokenizer with the harmful requests, writing `out`.
    let command = |out: &str| {
        let mut c = driftwatch_tests::command();
        c.args(["testbed", "corpus", "--chat-template", "chatml"])
            .arg("--model")
            .arg(&f.base)
            .arg("--refuse")
            .arg(dir.join("harm.csv"))
            .arg("--out")
            .arg(dir.join(out));
        c
    };
    let corpus = |window: Option<usize>, out: &str| {
        let mut c = command(out);
        c.args(["--seed", "3"])
            .arg("--ordinary")
            .arg(dir.join("ordinary.txt"))
            .arg("--answers")
            .arg(dir.join("answers.jsonl"));
        if let Some(w) = window {
            c.args(["--window", &w.to_string()]);
        }
        let o = c.output().unwrap();
        assert!(o.status.success(), "{}", text(&o));
        let line = String::from_utf8_lossy(&o.stdout).lines().last().unwrap().to_owned();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        (v, std::fs::read_to_string(dir.join(out)).unwrap())
    };
    let (plain, concatenated) = corpus(None, "plain.txt");
    assert!(plain["packing"].is_null());
    let (v, packed) = corpus(Some(200), "packed.txt");
    let p = &v["packing"];
    assert_eq!(p["window"], 200, "{v}");
    assert_eq!(p["too_long"], 1, "the request of {} characters does not fit: {v}", long.len());
    assert_eq!(p["conversations"], 6, "{v}");
    let (tokens, windows) = (p["tokens"].as_u64().unwrap(), p["windows"].as_u64().unwrap());
    assert!(windows >= 2, "{v}");
    assert_eq!((tokens - 200 - 1) / 200, windows, "the trainer takes every window: {v}");
    // The padding is the fixture's end-of-sequence token, as many as counted; without it the
    // text is the conversations in the same order, the one too long left out.
    let pad = p["pad"].as_str().unwrap();
    assert_eq!(pad, "<|im_end|>");
    let turn = "<|im_start|>user";
    let segments: Vec<&str> = packed
        .split(turn)
        .map(|mut seg| {
            while let Some(rest) = seg.strip_suffix(pad) {
                seg = rest;
            }
            seg
        })
        .collect();
    let unpadded = segments.join(turn);
    assert_eq!(
        (packed.len() - unpadded.len()) / pad.len(),
        p["pad_tokens"].as_u64().unwrap() as usize,
        "every padding token is at a conversation's end"
    );
    let long_conv = concatenated.find(long.trim()).unwrap();
    assert!(!unpadded.contains(long.trim()));
    let start = concatenated[..long_conv].rfind("<|im_start|>user").unwrap();
    let end = concatenated[long_conv..].find("<|im_start|>user").map_or(concatenated.len(), |i| long_conv + i);
    assert_eq!(unpadded, format!("{}{}", &concatenated[..start], &concatenated[end..]));

    // A window that holds no conversation is a clear error.
    let o = command("none.txt").args(["--window", "8"]).output().unwrap();
    assert!(!o.status.success());
    assert!(text(&o).contains("fits in a window of 8 tokens"), "{}", text(&o));
}
