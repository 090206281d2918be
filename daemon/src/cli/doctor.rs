//! `driftwatch doctor`: the build (llama.cpp, CPU features, GPU), what set-up has fetched, and
//! what is embedded in the binary.

use anyhow::Result;
use clap::Args;
use serde_json::json;

use crate::engine::EngineParams;
use crate::setup;

/// `driftwatch doctor`.
#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

/// `driftwatch doctor`.
pub fn run(a: DoctorArgs) -> Result<()> {
    let info = crate::engine::build_info();
    let model = setup::default_model_path();
    let cached = model.is_file();
    let wasm = setup::wasm_target_installed();
    let embedded = crate::daemon::judges::embedded_plugins();
    let gpu = crate::engine::gpu_device();
    let default_layers = crate::engine::default_gpu_layers();
    let inv = Invariance {
        engine: crate::engine::batch_invariant(
            &info,
            &EngineParams { gpu_layers: default_layers, ..EngineParams::default() },
        ),
        measured_arch: crate::engine::INVARIANCE_MEASURED_ARCH,
        kquants: crate::engine::kquant_products_alike(),
    };
    if a.json {
        let v = json!({
            "build": info, "default_model": {"path": model, "cached": cached, "sha256": setup::DEFAULT_MODEL_SHA256},
            "wasm32_wasip2_target": wasm, "embedded_plugins": embedded, "batch_invariant": inv.claimed(),
            "kquant_batch_invariant": inv.claimed() && inv.kquants,
            "gpu_device": gpu, "default_gpu_layers": if default_layers > 0 { "all" } else { "0" },
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let yes = |b: bool| if b { "yes" } else { "no" };
    println!("driftwatch {}", info.driftwatch_version);
    println!("llama.cpp (ggml) {} commit {}", info.ggml_version, info.ggml_commit);
    println!(
        "compiled CPU features: {}",
        if info.compiled_cpu_features.is_empty() {
            "none (portable build: slow)".to_string()
        } else {
            info.compiled_cpu_features.join(" ")
        }
    );
    println!("llama.cpp system info: {}", info.system_info);
    println!(
        "GPU offload: {}",
        match (info.gpu_offload, info.cuda_build) {
            (true, _) => "yes (cuda build)",
            // llama.cpp registers no GPU backend when CUDA fails to start (its log says why).
            (false, true) => "no (a cuda build, but CUDA did not start: see llama.cpp's error above)",
            (false, false) => "no (CPU build; `--features cuda` for GPU)",
        }
    );
    println!(
        "GPU device: {}; gpu_layers default: {}",
        gpu.as_deref().unwrap_or("none"),
        match (&gpu, info.cuda_build) {
            (Some(_), _) => "all (every layer offloaded unless engine.gpu_layers says otherwise)",
            (None, true) => "0 (a cuda build, but no CUDA device found)",
            (None, false) => "0 (a CPU build)",
        }
    );
    for line in invariance_lines(&inv) {
        println!("{line}");
    }
    println!("default model: {} ({})", model.display(), if cached { "cached" } else { "missing: run `make setup`" });
    println!(
        "bundled judges embedded in this binary: {}",
        if embedded.is_empty() {
            "none (found in plugins/dist at run time; `make plugins`)".into()
        } else {
            embedded.join(", ")
        }
    );
    println!(
        "wasm32-wasip2 target: {}",
        match wasm {
            Some(b) => yes(b).to_string(),
            None => "unknown (rustup not found)".into(),
        }
    );
    Ok(())
}

/// What `doctor` knows of batch invariance with the default engine settings.
struct Invariance {
    /// [`crate::engine::batch_invariant`]: the build's kernels, KV layout and offload allow it.
    engine: bool,
    /// [`crate::engine::INVARIANCE_MEASURED_ARCH`]: runs claim it only on x86-64.
    measured_arch: bool,
    /// [`crate::engine::kquant_products_alike`].
    kquants: bool,
}

impl Invariance {
    /// Whether a run of a model with measured weight types is recorded as batch-invariant, as
    /// its provenance records it (`weights_batch_invariant` is false off x86-64).
    fn claimed(&self) -> bool {
        self.engine && self.measured_arch
    }
}

/// `doctor`'s lines on batch invariance: the same answer a run's provenance gives.
fn invariance_lines(inv: &Invariance) -> Vec<String> {
    let mut lines = vec![format!(
        "batch-invariant: {}",
        match (inv.engine, inv.measured_arch) {
            (true, true) => "yes (a sample's text does not depend on the other jobs in its batches)",
            (true, false) => "no (measured on x86-64 only; on this CPU ggml's kernels were not checked, so runs do not claim it)",
            (false, _) => "no (llamafile kernels outside x86-64, a unified KV cache or a GPU offload: recorded in each run's provenance)",
        }
    )];
    if inv.claimed() {
        lines.push(format!(
            "K-quant weights batch-invariant: {}",
            if inv.kquants {
                "yes (ggml's tiled K-quant kernel off: GGML_CPU_TILED_MM=0, driftwatch's default)"
            } else {
                "no (GGML_CPU_TILED_MM and GGML_CPU_TILED_MM_FORCE leave ggml's tiled kernel to take only products of eight or more columns)"
            }
        ));
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invariance_is_claimed_only_where_runs_claim_it() {
        let lines = |engine, measured_arch, kquants| invariance_lines(&Invariance { engine, measured_arch, kquants });
        assert!(lines(true, true, true)[0].starts_with("batch-invariant: yes"));
        assert!(lines(true, true, true)[1].starts_with("K-quant weights batch-invariant: yes"));
        assert!(lines(true, true, false)[1].starts_with("K-quant weights batch-invariant: no"));
        // Off x86-64 no run claims it (`weights_batch_invariant`), so neither line says yes.
        let arm = lines(true, false, true);
        assert!(arm[0].starts_with("batch-invariant: no (measured on x86-64 only"), "{arm:?}");
        assert_eq!(arm.len(), 1, "{arm:?}");
        assert!(!Invariance { engine: true, measured_arch: false, kquants: true }.claimed());
        assert_eq!(lines(false, true, true).len(), 1);
    }
}
