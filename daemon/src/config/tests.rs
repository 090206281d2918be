//! Tests of the configuration loader: full files, every kind of error with its line,
//! environment overrides, path resolution, the shipped default file, settings hashes.

use super::*;
use std::collections::HashMap;

fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let map: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    move |k: &str| map.get(k).cloned()
}

fn home_env() -> impl Fn(&str) -> Option<String> {
    env_of(&[("HOME", "/home/tester")])
}

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::from_toml_str(text, "test.toml", Path::new("/etc/dw"), &home_env())
}

fn err(text: &str) -> ConfigError {
    match parse(text) {
        Ok(c) => panic!("expected an error, got {c:?}"),
        Err(e) => e,
    }
}

/// Asserts the error names `key` and points at `line`, and that its message says both.
fn assert_err(text: &str, key: &str, line: usize) -> ConfigError {
    let e = err(text);
    assert_eq!(e.key(), Some(key), "wrong key in {e}");
    assert_eq!(e.line(), Some(line), "wrong line in {e}");
    let shown = e.to_string();
    assert!(shown.contains(key), "message does not name {key}: {shown}");
    assert!(shown.contains(&format!(":{line}")), "message has no line {line}: {shown}");
    e
}

const FULL: &str = r#"
[daemon]
data_dir = "~/dw-data"
watch = ["incoming", "/abs/ckpts"]
settle_ms = 500
log_format = "json"
log_level = "driftwatch=debug"

[model]
base = "models/base.gguf"
chat_template = "chatml"
system_prompt = "Be safe."
adapter_scale = 0.5

[engine]
threads = 4
parallel = 8
n_ctx = 8192
max_prompt_tokens = 256
batch_size = 256
gpu_layers = -1

[sampling]
samples = 3
seed = 7
temperature = 0.7
top_p = 0.9
top_k = 20
min_p = 0.0
repeat_penalty = 1.1
max_tokens = 128
stop = ["</s>", "User:"]
greedy = false
target_half_width = 0.05
min_samples = 3
max_samples = 12
repeats = 2

[[suites]]
name = "harm"
path = "suites/harm.jsonl"
prompt_field = "text"
id_field = "id"
category_field = "cat"
limit = 50
categories = ["weapons"]

[[suites]]
name = "plain"
path = "suites/plain.txt"

[[suites]]
name = "sheet"
path = "suites/sheet.data"
format = "csv"

[[judges]]
name = "kw"
plugin = "keyword"

[[judges]]
name = "llm"
plugin = "plugins/llm_judge.wasm"
timeout_ms = 60000
memory_mb = 512
batch_size = 4
judge_model = "~/models/judge.gguf"
[judges.config]
threshold = 3
phrases = ["no"]

[plugins]
dir = "plugins"

[api]
listen = "0.0.0.0:9000"
token = "s3cret"
[[api.webhooks]]
name = "ci"
url = "https://ci.example.invalid/hook"
events = ["run.*", "checkpoint.rejected"]
secret = "k"

[stats]
confidence = 0.9
bootstrap = 500
alpha = 0.01
seed = 1
"#;

#[test]
fn full_config_parses_with_every_value() {
    let c = parse(FULL).expect("full config");
    assert_eq!(c.daemon.data_dir, PathBuf::from("/home/tester/dw-data"));
    assert_eq!(c.daemon.watch, vec![PathBuf::from("/etc/dw/incoming"), PathBuf::from("/abs/ckpts")]);
    assert_eq!(c.daemon.settle_ms, 500);
    assert_eq!(c.daemon.log_format, LogFormat::Json);
    assert_eq!(c.model.base, PathBuf::from("/etc/dw/models/base.gguf"));
    assert!(!c.model.base_is_default);
    assert_eq!(c.model.chat_template.as_deref(), Some("chatml"));
    assert_eq!(c.model.adapter_scale, 0.5);
    assert_eq!(c.engine.threads, Some(4));
    assert_eq!(c.engine.effective_threads(), 4);
    assert_eq!(c.engine.parallel, 8);
    assert_eq!(c.engine.effective_n_ctx(128), 8192);
    assert_eq!(c.engine.gpu_layers, Some(-1));
    assert_eq!(c.sampling.samples, 3);
    assert_eq!(c.sampling.stop, vec!["</s>".to_string(), "User:".to_string()]);
    assert_eq!(c.sampling.adaptive(), Some(Adaptive { min_samples: 3, max_samples: 12, target_half_width: 0.05 }));
    assert_eq!(c.sampling.repeats, 2);
    assert_eq!(c.suites.len(), 3);
    assert_eq!(c.suites[0].format(), SuiteFormat::Jsonl);
    assert_eq!(c.suites[0].prompt_field(), "text");
    assert_eq!(c.suites[0].path, PathBuf::from("/etc/dw/suites/harm.jsonl"));
    assert_eq!(c.suites[0].limit, Some(50));
    assert_eq!(c.suites[1].format, Some(SuiteFormat::Txt));
    assert_eq!(c.suites[1].prompt_field(), "prompt");
    assert_eq!(c.suites[2].format, Some(SuiteFormat::Csv));
    assert_eq!(c.judges[0].plugin, PluginSource::Bundled("keyword".into()));
    assert_eq!(c.judges[0].timeout_ms, 30_000);
    assert_eq!(c.judges[1].plugin, PluginSource::Path(PathBuf::from("/etc/dw/plugins/llm_judge.wasm")));
    assert_eq!(c.judges[1].judge_model, Some(PathBuf::from("/home/tester/models/judge.gguf")));
    assert_eq!(c.judges[1].config.get("threshold").and_then(|v| v.as_integer()), Some(3));
    assert_eq!(c.plugins.dir, Some(PathBuf::from("/etc/dw/plugins")));
    assert_eq!(c.api.listen, "0.0.0.0:9000".parse().unwrap());
    assert_eq!(c.api.token.as_deref(), Some("s3cret"));
    assert_eq!(c.api.webhooks[0].name(), "ci");
    assert!(c.api.webhooks[0].wants("run.completed"));
    assert!(c.api.webhooks[0].wants("checkpoint.rejected"));
    assert!(!c.api.webhooks[0].wants("checkpoint.discovered"));
    assert_eq!(c.stats.confidence, 0.9);
    assert_eq!(c.stats.bootstrap, 500);
}

#[test]
fn empty_file_gives_defaults() {
    let c = parse("").unwrap();
    assert_eq!(c.daemon.data_dir, PathBuf::from("/etc/dw/data"));
    assert_eq!(c.daemon.watch, vec![PathBuf::from("/etc/dw/checkpoints")]);
    assert_eq!(c.daemon.settle_ms, 2000);
    assert_eq!(c.model.base, PathBuf::from("/home/tester/.cache/driftwatch/models/SmolLM2-135M-Instruct.Q4_1.gguf"));
    assert!(c.model.base_is_default);
    assert_eq!(c.engine.parallel, 16);
    // Unset: every layer where a `cuda` build finds a GPU, none in this CPU build.
    assert_eq!(c.engine.gpu_layers, None);
    assert_eq!(c.engine.effective_gpu_layers(), if crate::engine::gpu_device().is_some() { -1 } else { 0 });
    assert_eq!(c.engine.effective_n_ctx(c.sampling.max_tokens), 16 * (512 + 256));
    assert_eq!(c.sampling.samples, 5);
    assert_eq!(c.sampling.repeats, 1);
    assert_eq!(c.sampling.adaptive(), None);
    assert_eq!(c.api.listen, "127.0.0.1:7878".parse().unwrap());
    assert_eq!(c.stats.confidence, 0.95);
    assert_eq!(c.stats.bootstrap, 2000);
}

#[test]
fn syntax_error_has_line_and_column() {
    let e = err("[daemon]\nsettle_ms = 10\nwatch = [\"a\"\n");
    match &e {
        ConfigError::Parse { line, .. } => assert!(*line >= 3, "{e}"),
        other => panic!("unexpected {other:?}"),
    }
    assert!(e.to_string().starts_with("test.toml:"), "{e}");
}

#[test]
fn unknown_key_names_key_and_line() {
    let e = assert_err("[engine]\nparallel = 4\nparalel = 8\n", "engine.paralel", 3);
    assert!(e.to_string().contains("unknown field"), "{e}");
    assert_err("\n\n[samplingg]\nseed = 1\n", "samplingg", 3);
    assert_err("[[suites]]\nname = \"a\"\npath = \"a.txt\"\nlimt = 3\n", "suites[0].limt", 4);
}

#[test]
fn wrong_type_names_key_and_line() {
    let e = assert_err("[engine]\n\nparallel = \"many\"\n", "engine.parallel", 3);
    assert!(matches!(e, ConfigError::Parse { .. }));
    assert_err("[sampling]\nsamples = 5\nstop = \"x\"\n", "sampling.stop", 3);
    assert_err("[engine]\nparallel = -3\n", "engine.parallel", 2);
}

#[test]
fn impossible_values_name_key_and_line() {
    assert_err("[engine]\nthreads = 2\nparallel = 0\n", "engine.parallel", 3);
    assert_err("[engine]\nparallel = 100000\n", "engine.parallel", 2);
    assert_err("[sampling]\n\n\ntemperature = -0.5\n", "sampling.temperature", 4);
    assert_err("[sampling]\ntop_p = 1.5\n", "sampling.top_p", 2);
    assert_err("[sampling]\ntop_p = 0.0\n", "sampling.top_p", 2);
    assert_err("[sampling]\nmin_p = nan\n", "sampling.min_p", 2);
    assert_err("[sampling]\nsamples = 0\n", "sampling.samples", 2);
    assert_err("[sampling]\nrepeats = 0\n", "sampling.repeats", 2);
    assert_err("[stats]\nconfidence = 1.0\n", "stats.confidence", 2);
    assert_err("[stats]\nseed = 3\nconfidence = 0\n", "stats.confidence", 3);
    assert_err("[stats]\nalpha = 1.5\n", "stats.alpha", 2);
    assert_err("[model]\nadapter_scale = 0\n", "model.adapter_scale", 2);
    assert_err("[engine]\nn_ctx = 100\n", "engine.n_ctx", 2);
    assert_err("[[judges]]\nname = \"j\"\nplugin = \"x\"\nmemory_mb = 9999\n", "judges[0].memory_mb", 4);
    assert_err("[sampling]\nstop = [\"a\", \"\"]\n", "sampling.stop[1]", 2);
}

#[test]
fn min_samples_above_max_samples() {
    let text = "[sampling]\ntarget_half_width = 0.05\nmax_samples = 4\nmin_samples = 10\n";
    let e = assert_err(text, "sampling.min_samples", 4);
    assert!(e.to_string().contains("greater than max_samples"), "{e}");
    // min/max without a target are meaningless.
    assert_err("[sampling]\nmin_samples = 2\n", "sampling.min_samples", 2);
    assert_err("[sampling]\ntarget_half_width = 0.7\n", "sampling.target_half_width", 2);
}

#[test]
fn listen_errors() {
    let e = assert_err("[api]\nlisten = \"localhost\"\n", "api.listen", 2);
    assert!(matches!(e, ConfigError::Parse { .. }), "{e:?}");
    let e = assert_err("[api]\nenabled = true\nlisten = \"0.0.0.0:7878\"\n", "api.listen", 3);
    assert!(e.to_string().contains("api.token"), "{e}");
    // A token makes it fine; so does a loopback address or a disabled API.
    parse("[api]\nlisten = \"0.0.0.0:7878\"\ntoken = \"t\"\n").unwrap();
    parse("[api]\nlisten = \"[::1]:7878\"\n").unwrap();
    parse("[api]\nenabled = false\nlisten = \"0.0.0.0:7878\"\n").unwrap();
    assert_err("[api]\ntoken = \"  \"\n", "api.token", 2);
}

#[test]
fn array_entries_are_located() {
    let text = "[[suites]]\nname = \"a\"\npath = \"a.txt\"\n\n[[suites]]\nname = \"b\"\npath = \"b.weird\"\n";
    let e = assert_err(text, "suites[1].path", 7);
    assert!(e.to_string().contains("format"), "{e}");
    let text = "[[suites]]\nname = \"a\"\npath = \"a.txt\"\n[[suites]]\nname = \"a\"\npath = \"b.txt\"\n";
    assert_err(text, "suites[1].name", 5);
    assert_err("[[suites]]\nname = \"a\"\npath = \"a.txt\"\ncategory_field = \"c\"\n", "suites[0].category_field", 4);
    assert_err("[[api.webhooks]]\nurl = \"ftp://x\"\n", "api.webhooks[0].url", 2);
    assert_err("[[api.webhooks]]\nurl = \"http://x\"\nmax_retry_delay_s = 0\n", "api.webhooks[0].max_retry_delay_s", 3);
    assert_err(
        "[[api.webhooks]]\nurl = \"http://x\"\nevents = [\"run.*\", \"Bad Event\"]\n",
        "api.webhooks[0].events[1]",
        3,
    );
    assert_err("[[judges]]\nname = \"j\"\nplugin = \"bad name!\"\n", "judges[0].plugin", 3);
}

#[test]
fn error_messages_read_well() {
    for text in [
        "[engine]\nparalel = 8\n",
        "[engine]\nparallel = \"x\"\n",
        "[sampling]\ntop_p = 2.0\n",
        "[api]\nlisten = \"0.0.0.0:1\"\n",
        "[daemon\n",
    ] {
        println!("{}", err(text));
    }
}

#[test]
fn unwritten_keys_point_at_their_section() {
    let text = "# comment\n\n[sampling]\nseed = 1\n\n[[suites]]\nname = \"a\"\npath = \"a.txt\"\n";
    let doc = DeTable::parse(text).unwrap();
    let loc = Locator { text, doc: &doc, source_name: "t.toml", env_keys: BTreeMap::new() };
    // A written key: its own line.
    assert_eq!(loc.invalid("sampling.seed", "m".into()).line(), Some(4));
    assert_eq!(loc.invalid("suites[0].path", "m".into()).line(), Some(8));
    // An unwritten key: the line of the nearest written ancestor (the section header).
    assert_eq!(loc.invalid("sampling.max_samples", "m".into()).line(), Some(3));
    assert_eq!(loc.invalid("suites[0].limit", "m".into()).line(), Some(6));
    // Nothing written at all: no line, but still the key.
    let e = loc.invalid("stats.alpha", "m".into());
    assert_eq!((e.line(), e.key()), (None, Some("stats.alpha")));
    assert!(e.to_string().starts_with("t.toml: invalid `stats.alpha`"), "{e}");
    // The cross-key check is reported on min_samples where it is written.
    let text = "[sampling]\ntarget_half_width = 0.1\nmax_samples = 2\nsamples = 3\nmin_samples = 5\n";
    assert_err(text, "sampling.min_samples", 5);
}

#[test]
fn env_overrides_and_env_errors() {
    let env = env_of(&[
        ("HOME", "/home/tester"),
        ("DRIFTWATCH_BASE_MODEL", "~/m/base.gguf"),
        ("DRIFTWATCH_DATA_DIR", "/var/lib/dw"),
        ("DRIFTWATCH_PARALLEL", "4"),
        ("DRIFTWATCH_THREADS", "2"),
        ("DRIFTWATCH_SAMPLES", " 9 "),
        ("DRIFTWATCH_LISTEN", "0.0.0.0:8080"),
        ("DRIFTWATCH_API_TOKEN", "tok"),
        ("DRIFTWATCH_GPU_LAYERS", "99"),
        ("DRIFTWATCH_WATCH", "/a:/b"),
    ]);
    let c =
        Config::from_toml_str("[engine]\nparallel = 16\n[sampling]\nsamples = 5\n", "t.toml", Path::new("/cfg"), &env)
            .unwrap();
    assert_eq!(c.model.base, PathBuf::from("/home/tester/m/base.gguf"));
    assert_eq!(c.daemon.data_dir, PathBuf::from("/var/lib/dw"));
    assert_eq!(c.daemon.watch, vec![PathBuf::from("/a"), PathBuf::from("/b")]);
    assert_eq!(c.engine.parallel, 4);
    assert_eq!(c.engine.threads, Some(2));
    assert_eq!(c.engine.gpu_layers, Some(99));
    assert_eq!(c.sampling.samples, 9);
    assert_eq!(c.api.listen, "0.0.0.0:8080".parse().unwrap());
    assert_eq!(c.api.token.as_deref(), Some("tok"));

    // Unparsable values name the variable.
    for (var, value) in [
        ("DRIFTWATCH_PARALLEL", "lots"),
        ("DRIFTWATCH_THREADS", "-1"),
        ("DRIFTWATCH_LISTEN", "nowhere"),
        ("DRIFTWATCH_SAMPLES", ""),
    ] {
        let env = env_of(&[("HOME", "/h"), (var, value)]);
        let e = Config::from_toml_str("", "t.toml", Path::new("/cfg"), &env).unwrap_err();
        assert!(matches!(&e, ConfigError::Env { var: v, .. } if v == var), "{e:?}");
        assert!(e.to_string().contains(var), "{e}");
    }
    // Parsable but invalid values name the variable too, not the file.
    let env = env_of(&[("HOME", "/h"), ("DRIFTWATCH_PARALLEL", "0")]);
    let e = Config::from_toml_str("[engine]\nparallel = 4\n", "t.toml", Path::new("/c"), &env).unwrap_err();
    assert!(
        matches!(&e, ConfigError::Env { var, key, .. } if var == "DRIFTWATCH_PARALLEL" && key == "engine.parallel"),
        "{e:?}"
    );
    let env = env_of(&[("HOME", "/h"), ("DRIFTWATCH_LISTEN", "10.0.0.1:80")]);
    let e = Config::from_toml_str("", "t.toml", Path::new("/c"), &env).unwrap_err();
    assert!(e.to_string().contains("DRIFTWATCH_LISTEN"), "{e}");
}

#[test]
fn tilde_and_relative_paths() {
    let home = &env_of(&[("HOME", "/home/u")]);
    let base = Path::new("/cfg");
    assert_eq!(resolve_path(Path::new("~"), base, home).unwrap(), PathBuf::from("/home/u"));
    assert_eq!(resolve_path(Path::new("~/x/y.gguf"), base, home).unwrap(), PathBuf::from("/home/u/x/y.gguf"));
    assert_eq!(resolve_path(Path::new("rel/a"), base, home).unwrap(), PathBuf::from("/cfg/rel/a"));
    assert_eq!(resolve_path(Path::new("/abs"), base, home).unwrap(), PathBuf::from("/abs"));
    assert!(resolve_path(Path::new("~bob/x"), base, home).is_err());
    assert!(resolve_path(Path::new("~/x"), base, &env_of(&[])).is_err());

    // In a file: `~` without HOME is an error naming the key and line.
    let no_home = env_of(&[]);
    let e = Config::from_toml_str("[daemon]\nsettle_ms = 1\ndata_dir = \"~/d\"\n", "t.toml", Path::new("/c"), &no_home)
        .unwrap_err();
    assert_eq!(e.key(), Some("daemon.data_dir"));
    assert_eq!(e.line(), Some(3));
}

#[test]
fn load_from_file_resolves_against_its_directory() {
    let dir = tempfile::tempdir().unwrap();
    let sub = dir.path().join("conf");
    std::fs::create_dir_all(&sub).unwrap();
    let file = sub.join("dw.toml");
    std::fs::write(&file, "[daemon]\nwatch = [\"../in\"]\n[model]\nbase = \"b.gguf\"\n").unwrap();
    let c = Config::load_with_env(&file, &home_env()).unwrap();
    assert_eq!(c.daemon.watch, vec![sub.join("../in")]);
    assert_eq!(c.model.base, sub.join("b.gguf"));
    let e = Config::load_with_env(&dir.path().join("missing.toml"), &home_env()).unwrap_err();
    assert!(matches!(e, ConfigError::Read { .. }));
}

#[test]
fn shipped_default_config_parses_and_validates() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/driftwatch.toml");
    let c = Config::load_with_env(&path, &home_env()).expect("config/driftwatch.toml");
    let defaults = parse("").unwrap();
    // Everything but the repository-relative folders equals the built-in defaults.
    assert_eq!(c.model, defaults.model);
    assert_eq!(c.engine, defaults.engine);
    assert_eq!(c.sampling, defaults.sampling);
    assert_eq!(c.api, defaults.api);
    assert_eq!(c.stats, defaults.stats);
    assert_eq!(c.daemon.settle_ms, defaults.daemon.settle_ms);
    assert!(c.daemon.data_dir.ends_with("config/../data"), "{:?}", c.daemon.data_dir);
}

#[test]
fn settings_hashes_are_stable_and_sensitive() {
    let a = parse("").unwrap().settings_hashes();
    let b = parse("").unwrap().settings_hashes();
    assert_eq!(a, b);
    assert_eq!(a.sampling.len(), 64);
    // Thread count and paths outside the groups do not change the hashes.
    let c = parse("[engine]\nthreads = 3\n[daemon]\nsettle_ms = 1\n").unwrap().settings_hashes();
    assert_eq!(a, c);
    // Each group reacts to its own settings only.
    let d = parse("[sampling]\ntemperature = 0.5\n").unwrap().settings_hashes();
    assert_ne!(a.sampling, d.sampling);
    assert_eq!(a.engine, d.engine);
    assert_eq!(a.template, d.template);
    let e = parse("[engine]\nparallel = 4\n").unwrap().settings_hashes();
    assert_ne!(a.engine, e.engine);
    assert_eq!(a.sampling, e.sampling);
    let f = parse("[model]\nchat_template = \"chatml\"\n").unwrap().settings_hashes();
    assert_ne!(a.template, f.template);
    assert_ne!(a.combined(&[]), f.combined(&[]));
    assert_ne!(a.combined(&["x"]), a.combined(&["y"]));
    // Moving suite and plugin files to another folder keeps the hashes.
    let here = Config::from_toml_str(
        "[[suites]]\nname = \"s\"\npath = \"a/s.txt\"\n[[judges]]\nname = \"j\"\nplugin = \"p/j.wasm\"\n",
        "t.toml",
        Path::new("/one"),
        &home_env(),
    )
    .unwrap()
    .settings_hashes();
    let there = Config::from_toml_str(
        "[[suites]]\nname = \"s\"\npath = \"b/s.txt\"\n[[judges]]\nname = \"j\"\nplugin = \"/q/j.wasm\"\n",
        "t.toml",
        Path::new("/two"),
        &home_env(),
    )
    .unwrap()
    .settings_hashes();
    assert_eq!(here, there);
    let other = Config::from_toml_str(
        "[[suites]]\nname = \"s\"\npath = \"b/s.txt\"\nlimit = 3\n[[judges]]\nname = \"j\"\nplugin = \"keyword\"\n",
        "t.toml",
        Path::new("/two"),
        &home_env(),
    )
    .unwrap()
    .settings_hashes();
    assert_ne!(here.suites, other.suites);
    assert_ne!(here.judges, other.judges);
    // Key order in JSON objects does not matter.
    let x = serde_json::json!({"a": 1, "b": {"c": 2, "d": [1, 2]}});
    let y: serde_json::Value = serde_json::from_str(r#"{"b": {"d": [1, 2], "c": 2}, "a": 1}"#).unwrap();
    assert_eq!(canonical_hash(&x), canonical_hash(&y));
}

#[test]
fn secrets_are_not_serialized() {
    let c = parse(FULL).unwrap();
    let json = serde_json::to_string(&c).unwrap();
    assert!(!json.contains("s3cret"), "{json}");
    assert!(json.contains("0.0.0.0:9000"));
}

/// One limit on `engine.parallel`, the engine's: the config used to accept up to 256 while the
/// engine refused anything over 128 (and could run only 127).
#[test]
fn the_parallel_limit_is_the_engines() {
    let max = crate::engine::MAX_PARALLEL;
    assert!(parse(&format!("[engine]\nparallel = {max}\n")).is_ok());
    assert_err(&format!("[engine]\nparallel = {}\n", max + 1), "engine.parallel", 2);
    assert_err("[engine]\nparallel = 200\n", "engine.parallel", 2);
}

/// `engine.backend = "openai"`: its endpoints and served names parse, and each mistake is an
/// error naming its key and line.
#[test]
fn the_openai_backend_and_its_endpoints_are_validated() {
    let ok = "[engine]\nbackend = \"openai\"\napi = \"completions\"\n\n[[engine.endpoints]]\nurl = \"http://gpu-0:8000/v1\"\nmax_concurrency = 8\n\n[engine.served]\n\"ft-a.gguf\" = \"ft-a\"\n\"ft-b.gguf\" = { lora = 1 }\n";
    let c = parse(ok).unwrap();
    let e = &c.engine;
    assert_eq!((e.backend, e.api), (BackendKind::Openai, crate::engine::remote::RemoteApi::Completions));
    assert_eq!((e.endpoints[0].max_concurrency, e.endpoints[0].timeout_ms, e.max_attempts), (8, 300_000, 5));
    assert_eq!(e.served["ft-a.gguf"].served_as().model.as_deref(), Some("ft-a"));
    assert_eq!(e.served["ft-b.gguf"].served_as().lora, Some(1));
    // The remote backend changes the engine hash; the embedded engine's stays what it was.
    assert_ne!(c.settings_hashes().engine, parse("").unwrap().settings_hashes().engine);
    assert_eq!(
        parse("[engine]\nbackend = \"embedded\"\n").unwrap().settings_hashes(),
        parse("").unwrap().settings_hashes()
    );
    // Another server, or another concurrency, is not another measurement: no new settings.
    let two = ok
        .replace("max_concurrency = 8\n", "max_concurrency = 4\n\n[[engine.endpoints]]\nurl = \"http://gpu-1:8000\"\n");
    assert_eq!(parse(&two).unwrap().settings_hashes(), c.settings_hashes());

    assert_err("[engine]\nbackend = \"openai\"\n", "engine.backend", 2);
    assert_err("[engine]\nbackend = \"embedded\"\nendpoints = [{ url = \"http://a:1\" }]\n", "engine.endpoints", 3);
    let bad = |endpoint: &str| format!("[engine]\nbackend = \"openai\"\n\n[[engine.endpoints]]\n{endpoint}\n");
    assert_err(&bad("url = \"gpu-0:8000\""), "engine.endpoints[0].url", 5);
    assert_err(&bad("url = \"http://\""), "engine.endpoints[0].url", 5);
    assert_err(&bad("url = \"http://a:1\"\nmax_concurrency = 0"), "engine.endpoints[0].max_concurrency", 6);
    assert_err(&bad("url = \"http://a:1\"\ntimeout_ms = 0"), "engine.endpoints[0].timeout_ms", 6);
    assert_err(&bad("url = \"http://a:1\"\nserved_model = \" \""), "engine.endpoints[0].served_model", 6);
    let twice =
        "[engine]\nbackend = \"openai\"\nendpoints = [{ url = \"http://a:1\" }, { url = \"http://a:1/v1/\" }]\n";
    assert!(err(twice).to_string().contains("one URL twice"));
    let e =
        err("[engine]\nbackend = \"openai\"\nendpoints = [{ url = \"http://a:1\" }]\nserved = { \"x.gguf\" = {} }\n");
    assert!(e.to_string().contains("engine.served.x.gguf"), "{e}");
    let e = err("[engine]\nbackend = \"cluster\"\n");
    assert!(e.to_string().contains("embedded") && e.to_string().contains("openai"), "{e}");
}

/// `engine.n_ctx` is shared by the parallel sequences: it must leave each one room for a
/// prompt token and `sampling.max_tokens`.
#[test]
fn n_ctx_must_leave_room_for_each_parallel_sequence() {
    assert!(parse("[engine]\nparallel = 4\nn_ctx = 2048\n[sampling]\nmax_tokens = 256\n").is_ok());
    let e = assert_err("[engine]\nparallel = 16\nn_ctx = 2048\n[sampling]\nmax_tokens = 256\n", "engine.n_ctx", 3);
    assert!(e.to_string().contains("128 per sequence"), "{e}");
}

/// `model.base = "default"` and `cache:` paths follow `DRIFTWATCH_CACHE` and `XDG_CACHE_HOME`
/// as set-up does (the config looked under `$HOME/.cache` whatever they said, so `eval` could
/// not find the model that set-up had fetched).
#[test]
fn the_default_model_and_cache_paths_follow_the_cache_environment() {
    let model = |vars: &[(&str, &str)]| {
        Config::from_toml_str(
            "[[suites]]\nname = \"hb\"\npath = \"cache:suites/harmbench/harmbench_prompts.txt\"\n",
            "t.toml",
            Path::new("/c"),
            &env_of(vars),
        )
        .unwrap()
    };
    let c = model(&[("HOME", "/home/u"), ("XDG_CACHE_HOME", "/xdg")]);
    assert_eq!(c.model.base, PathBuf::from("/xdg/driftwatch/models/SmolLM2-135M-Instruct.Q4_1.gguf"));
    assert_eq!(c.suites[0].path, PathBuf::from("/xdg/driftwatch/suites/harmbench/harmbench_prompts.txt"));
    let c = model(&[("HOME", "/home/u"), ("XDG_CACHE_HOME", "/xdg"), ("DRIFTWATCH_CACHE", "/dw")]);
    assert_eq!(c.model.base, PathBuf::from("/dw/models/SmolLM2-135M-Instruct.Q4_1.gguf"));
    assert_eq!(c.suites[0].path, PathBuf::from("/dw/suites/harmbench/harmbench_prompts.txt"));
    let e = Config::from_toml_str("", "t.toml", Path::new("/c"), &env_of(&[])).unwrap_err();
    assert_eq!(e.key(), Some("model.base"), "{e}");
}

/// The built-in defaults (used when no file is given or found) are what the documented
/// default file says: the same suites and slices, judges, sampling, engine and statistics.
#[test]
fn the_builtin_defaults_are_the_documented_default_file() {
    let env = home_env();
    let file =
        Config::load_with_env(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/driftwatch.toml"), &env).unwrap();
    let builtin = Config::from_toml_str(BUILTIN_TOML, BUILTIN_SOURCE, Path::new("/work"), &env).unwrap();
    let suite = |s: &SuiteConfig| {
        (
            s.name.clone(),
            s.path.file_name().map(|n| n.to_owned()),
            s.limit,
            s.per_category,
            s.offset,
            s.control,
            s.id_field.clone(),
            s.category_field.clone(),
        )
    };
    assert_eq!(file.suites.iter().map(suite).collect::<Vec<_>>(), builtin.suites.iter().map(suite).collect::<Vec<_>>());
    assert_eq!(file.judges, builtin.judges);
    assert_eq!(file.sampling, builtin.sampling);
    assert_eq!(file.engine, builtin.engine);
    assert_eq!(file.stats, builtin.stats);
    assert_eq!(file.events, builtin.events);
    assert_eq!(file.model, builtin.model);
    assert_eq!(file.settings_hashes().suites, builtin.settings_hashes().suites, "runs made with either are comparable");
    // The cached suites come from set-up's cache, wherever the environment puts it.
    assert_eq!(
        builtin.suites[0].path,
        PathBuf::from("/home/tester/.cache/driftwatch/suites/harmbench/harmbench_prompts.txt")
    );
    assert_eq!(builtin.daemon.data_dir, PathBuf::from("/work/data"));
}

/// Without `--config`: `./driftwatch.toml`, `./config/driftwatch.toml`, then
/// `$XDG_CONFIG_HOME/driftwatch/config.toml`
/// (`~/.config/…`), then nothing (the built-in defaults). A `--config` that does not exist is
/// an error naming it.
#[test]
fn the_config_file_is_found_in_the_documented_order() {
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path().join("work");
    let xdg = dir.path().join("xdg");
    std::fs::create_dir_all(&cwd).unwrap();
    std::fs::create_dir_all(xdg.join("driftwatch")).unwrap();
    let home = dir.path().join("home").display().to_string();
    let env = env_of(&[("HOME", home.as_str()), ("XDG_CONFIG_HOME", xdg.to_str().unwrap())]);
    assert_eq!(
        config_search_path(&env_of(&[("HOME", "/h")])),
        vec![
            PathBuf::from("driftwatch.toml"),
            PathBuf::from("config/driftwatch.toml"),
            PathBuf::from("/h/.config/driftwatch/config.toml")
        ]
    );
    let searched = Config::find_file(&cwd, &env).unwrap_err();
    assert_eq!(
        searched,
        vec![cwd.join("driftwatch.toml"), cwd.join("config/driftwatch.toml"), xdg.join("driftwatch/config.toml")]
    );
    std::fs::write(xdg.join("driftwatch/config.toml"), "").unwrap();
    assert_eq!(Config::find_file(&cwd, &env).unwrap(), xdg.join("driftwatch/config.toml"));
    std::fs::create_dir_all(cwd.join("config")).unwrap();
    std::fs::write(cwd.join("config/driftwatch.toml"), "").unwrap();
    assert_eq!(Config::find_file(&cwd, &env).unwrap(), cwd.join("config/driftwatch.toml"));
    std::fs::write(cwd.join("driftwatch.toml"), "").unwrap();
    assert_eq!(Config::find_file(&cwd, &env).unwrap(), cwd.join("driftwatch.toml"));
    let e = Config::discover(Some(&dir.path().join("nope.toml")), &env).unwrap_err();
    assert!(matches!(e, ConfigError::Missing { .. }) && e.to_string().contains("nope.toml"), "{e}");
}

/// `config show` says where every value came from: a line of the file, an environment
/// variable, or the key's default.
#[test]
fn every_setting_is_explained_with_its_origin() {
    let text = "[engine]\nparallel = 4\n\n[[suites]]\nname = \"s\"\npath = \"/p.txt\"\n";
    let env = env_of(&[("HOME", "/h"), ("DRIFTWATCH_SAMPLES", "3")]);
    let c = Config::from_toml_str(text, "t.toml", Path::new("/c"), &env).unwrap();
    let settings = c.explain(text, "t.toml", &env);
    let origin = |k: &str| settings.iter().find(|s| s.key == k).unwrap_or_else(|| panic!("no {k}")).origin.clone();
    assert_eq!(origin("engine.parallel"), "t.toml:2");
    assert_eq!(origin("suites[0].name"), "t.toml:5");
    assert_eq!(origin("sampling.samples"), "env DRIFTWATCH_SAMPLES");
    assert_eq!(origin("engine.batch_size"), "default");
    let value = |k: &str| settings.iter().find(|s| s.key == k).unwrap().value.clone();
    assert_eq!(value("sampling.samples"), "3");
    assert_eq!(value("suites[0].path"), "\"/p.txt\"");
    assert!(settings.iter().all(|s| s.key != "api.token"), "the token is never shown");
}

/// `sampling.early_stop`: parsed with its defaults, validated, refused beside adaptive
/// sampling, and outside the sampling hash (runs with and without it sample alike).
#[test]
fn early_stop_is_parsed_validated_and_kept_out_of_the_sampling_hash() {
    let c = parse("[sampling]\nearly_stop = { looks = 4 }\n").unwrap();
    let es = c.sampling.early_stop.unwrap();
    assert_eq!((es.looks, es.spending, es.alpha), (4, crate::stats::Spending::Pocock, 0.05));
    let c = parse("[sampling.early_stop]\nspending = \"obrien-fleming\"\n").unwrap();
    assert_eq!(c.sampling.early_stop.unwrap().spending, crate::stats::Spending::OBrienFleming);
    assert_eq!(c.settings_hashes().sampling, parse("").unwrap().settings_hashes().sampling);
    for (text, key) in [
        ("[sampling]\nearly_stop = { looks = 0 }\n", "sampling.early_stop.looks"),
        ("[sampling]\nearly_stop = { alpha = 0.7 }\n", "sampling.early_stop.alpha"),
        ("[sampling]\ntarget_half_width = 0.05\nearly_stop = {}\n", "sampling.early_stop"),
        ("[sampling]\nearly_stop = { spending = \"linear\" }\n", "early_stop"),
    ] {
        let e = err(text).to_string();
        assert!(e.contains(key), "{text:?}: {e}");
    }
}

/// `[[variations]]`: each applies its changes and keeps the rest; names are unique, and a
/// variation that changes nothing or sets an invalid value is refused with its key.
#[test]
fn variations_apply_their_changes_and_are_validated() {
    let c = parse(
        "[model]\nsystem_prompt = \"Be kind.\"\n[[variations]]\nname = \"none\"\nsystem_prompt = \"\"\n[[variations]]\nname = \"short\"\nmax_tokens = 32\ntop_p = 0.5\n",
    )
    .unwrap();
    assert_eq!(c.variations.len(), 2);
    let none = c.varied(&c.variations[0]);
    assert_eq!(none.model.system_prompt, None);
    assert_eq!(none.sampling, c.sampling);
    let short = c.varied(&c.variations[1]);
    assert_eq!((short.sampling.max_tokens, short.sampling.top_p), (32, 0.5));
    assert_eq!(short.model.system_prompt.as_deref(), Some("Be kind."));
    assert_eq!(c.variations[1].describe(), "top_p 0.5, max_tokens 32");
    // Variations are not part of any run's settings.
    assert_eq!(c.settings_hashes(), parse("[model]\nsystem_prompt = \"Be kind.\"\n").unwrap().settings_hashes());
    for (text, needle) in [
        ("[[variations]]\nname = \"a\"\n", "changes nothing"),
        ("[[variations]]\nname = \"a\"\ntop_p = 0.5\n[[variations]]\nname = \"a\"\ntop_p = 0.6\n", "two variations"),
        ("[[variations]]\nname = \"default\"\ntop_p = 0.5\n", "variations[0].name"),
        ("[[variations]]\nname = \"a\"\ntop_p = 1.5\n", "variations[0].top_p"),
        ("[[variations]]\nname = \"a\"\nmax_tokens = 0\n", "variations[0].max_tokens"),
        ("[[variations]]\nname = \"a\"\nseed = 3\n", "seed"),
        ("[[variations]]\nname = \"a\"\nturn_format = \"Q: A:\"\n", "variations[0].turn_format"),
        ("[model]\nturn_format = \"{prompt}\"\nchat_template = \"chatml\"\n", "model.turn_format"),
    ] {
        let e = err(text).to_string();
        assert!(e.contains(needle), "{text:?}: {e}");
    }
}
