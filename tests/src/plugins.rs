//! Judge components for the tests: the bundled judges (`plugins/`) and the hostile and
//! well-behaved test components (`tests/fixtures/hostile/`), built for wasm32-wasip2 once per
//! test binary.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_owned()
}

/// Where nested wasm builds put their output: `$CARGO_TARGET_DIR` when set (shared with the
/// host build), else `<repo>/target`.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| repo_root().join("target"))
}

fn check_wasm_target() {
    let out = Command::new("rustc").args(["--print", "sysroot"]).output().expect("cannot run rustc");
    let sysroot = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    let lib = sysroot.join("lib/rustlib/wasm32-wasip2");
    assert!(
        lib.is_dir(),
        "the wasm32-wasip2 Rust target is not installed (looked for {}); these tests build judge \
         plugins as WebAssembly components. Install it with `rustup target add wasm32-wasip2`.",
        lib.display()
    );
}

/// Builds a cargo workspace of plugins for wasm32-wasip2 (release) and returns the folder
/// holding the `.wasm` files.
pub fn build_wasm_workspace(manifest: &Path) -> PathBuf {
    check_wasm_target();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "--target", "wasm32-wasip2", "--release", "--manifest-path"])
        .arg(manifest)
        .env("CARGO_TARGET_DIR", target_dir())
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .status()
        .expect("cannot run cargo");
    assert!(status.success(), "building the wasm components of {} failed", manifest.display());
    target_dir().join("wasm32-wasip2/release")
}

/// Path of a hostile/test fixture component (`tests/fixtures/hostile/<name>`).
pub fn hostile(name: &str) -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    let dir = DIR.get_or_init(|| build_wasm_workspace(&repo_root().join("tests/fixtures/hostile/Cargo.toml")));
    dir.join(format!("hostile_{name}.wasm"))
}

/// Path of a bundled judge component (`plugins/<name>`).
pub fn bundled(name: &str) -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    let dir = DIR.get_or_init(|| build_wasm_workspace(&repo_root().join("plugins/Cargo.toml")));
    dir.join(format!("{}.wasm", name.replace('-', "_")))
}
