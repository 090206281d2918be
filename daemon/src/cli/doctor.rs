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
    let invariant =
        crate::engine::batch_invariant(&info, &EngineParams { gpu_layers: default_layers, ..EngineParams::default() });
    let kquants = crate::engine::kquant_products_alike();
    if a.json {
        let v = json!({
            "build": info, "default_model": {"path": model, "cached": cached, "sha256": setup::DEFAULT_MODEL_SHA256},
            "wasm32_wasip2_target": wasm, "embedded_plugins": embedded, "batch_invariant": invariant,
            "kquant_batch_invariant": invariant && kquants,
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
    println!(
        "batch-invariant: {}",
        if invariant {
            "yes (a sample's text does not depend on the other jobs in its batches)"
        } else {
            "no (measured on x86-64 CPUs only, never with a unified KV cache or a GPU offload: recorded in each run's provenance)"
        }
    );
    if invariant {
        println!(
            "K-quant weights batch-invariant: {}",
            if kquants {
                "yes (ggml's tiled K-quant kernel off: GGML_CPU_TILED_MM=0, driftwatch's default)"
            } else {
                "no (GGML_CPU_TILED_MM and GGML_CPU_TILED_MM_FORCE leave ggml's tiled kernel to take only products of eight or more columns)"
            }
        );
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
