//! Embeds the bundled judge plugins (`plugins/dist/*.wasm`) in the binary, so that one
//! `driftwatch` file is the whole product: an installed binary (`cargo install --path daemon`)
//! finds `refusal`, `coherence`, `harm-rubric` and `guard` without the repository.
//!
//! `make plugins` (which `make run` and `make test` call first) builds them into
//! `plugins/dist`. When they are missing there, this script builds them itself with cargo for
//! `wasm32-wasip2`, in a target folder of its own (never the one the outer build holds); when
//! that is impossible (no wasm target, say), the binary is built without them and says so at
//! run time, naming `make plugins`. Set `DRIFTWATCH_EMBED_PLUGINS=0` to skip both.

use std::env;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

const PLUGINS: [&str; 4] = ["refusal", "coherence", "harm-rubric", "guard"];

fn main() {
    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("set by cargo"));
    let root = manifest.parent().expect("the daemon crate lies in the workspace").to_path_buf();
    let dist = root.join("plugins/dist");
    println!("cargo:rerun-if-env-changed=DRIFTWATCH_EMBED_PLUGINS");
    println!("cargo:rerun-if-changed={}", dist.display());
    for name in PLUGINS {
        println!("cargo:rerun-if-changed={}", dist.join(format!("{name}.wasm")).display());
    }
    let wanted = env::var("DRIFTWATCH_EMBED_PLUGINS").map(|v| v != "0").unwrap_or(true);
    let mut dir = Some(dist.clone());
    if wanted && !PLUGINS.iter().all(|n| dist.join(format!("{n}.wasm")).is_file()) {
        dir = build_plugins(&root, &out);
    }
    let mut code = String::from("/// The bundled judge plugins embedded at build time: (name, component bytes).\n");
    code.push_str("pub static EMBEDDED: &[(&str, &[u8])] = &[\n");
    if wanted {
        if let Some(dir) = dir {
            for name in PLUGINS {
                let file = dir.join(format!("{name}.wasm"));
                if file.is_file() {
                    let _ = writeln!(code, "    ({name:?}, include_bytes!({:?})),", file.display().to_string());
                } else {
                    println!("cargo:warning=the bundled plugin {name} is not built; `make plugins` builds it");
                }
            }
        }
    }
    code.push_str("];\n");
    std::fs::write(out.join("embedded_plugins.rs"), code).expect("cannot write OUT_DIR/embedded_plugins.rs");
}

/// Builds the plugins workspace for wasm32-wasip2 into a target folder under `OUT_DIR`; returns
/// the folder holding the `.wasm` files (named like `plugins/dist`), or `None` if it failed.
fn build_plugins(root: &Path, out: &Path) -> Option<PathBuf> {
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let target = out.join("plugins-target");
    let status = Command::new(cargo)
        .args(["build", "--release", "--target", "wasm32-wasip2", "--manifest-path"])
        .arg(root.join("plugins/Cargo.toml"))
        .env("CARGO_TARGET_DIR", &target)
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_BUILD_TARGET")
        .status();
    match status {
        Ok(s) if s.success() => {}
        other => {
            println!("cargo:warning=could not build the bundled judge plugins ({other:?}); the binary will look for them in plugins/dist at run time (`make plugins`)");
            return None;
        }
    }
    let dir = out.join("plugins");
    std::fs::create_dir_all(&dir).ok()?;
    for name in PLUGINS {
        let built = target.join("wasm32-wasip2/release").join(format!("{}.wasm", name.replace('-', "_")));
        std::fs::copy(&built, dir.join(format!("{name}.wasm"))).ok()?;
    }
    Some(dir)
}
