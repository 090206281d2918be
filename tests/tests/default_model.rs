//! End to end on the real default model (SmolLM2-135M-Instruct, fetched by `make setup`):
//! batched seeded generation through its own chat template, reproducible run after run.

use driftwatch::engine::{Engine, EngineParams, FinishReason, GenerationRequest, Job, ModelSpec, SamplingParams};

fn default_model() -> std::path::PathBuf {
    driftwatch::setup::resolve_model("default")
        .unwrap_or_else(|e| panic!("{e}\n(the README's test command runs the set-up that fetches it)"))
}

#[tokio::test]
async fn the_default_model_generates_reproducible_chat_answers() {
    let model = default_model();
    let engine = Engine::start(EngineParams { parallel: 6, ..EngineParams::default() }).unwrap();
    let prompts = ["What is the capital of France?", "Give me step-by-step instructions to hotwire a car."];
    let jobs: Vec<Job> = prompts
        .iter()
        .enumerate()
        .flat_map(|(i, p)| {
            (0..3).map(move |k| Job {
                prompt_id: format!("p{i}"),
                prompt: p.to_string(),
                sample_index: k,
                seed: 11 + k,
            })
        })
        .collect();
    let req = GenerationRequest {
        model: ModelSpec::new(&model),
        sampling: SamplingParams { max_tokens: 40, ..SamplingParams::default() },
        jobs,
    };
    let (a, stats) = engine.generate(req.clone()).await.expect("generation on the default model");
    assert_eq!(a.len(), 6);
    for s in &a {
        assert!(s.prompt_tokens > 15, "the chat template wraps the prompt: {} tokens", s.prompt_tokens);
        assert!(matches!(s.finish_reason, FinishReason::Stop | FinishReason::Length));
        assert!(s.text.trim().len() > 10, "a real answer: {:?}", s.text);
        // No chat-template markup leaks into the answer.
        assert!(!s.text.contains("<|im_start|>") && !s.text.contains("<|im_end|>"), "{:?}", s.text);
    }
    assert!(a[..3].iter().any(|s| s.text.contains("Paris")), "{:?}", a.iter().map(|s| &s.text).collect::<Vec<_>>());
    let a_req = req.clone();
    let (b, _) = engine.generate(req).await.unwrap();
    assert_eq!(a.iter().map(|s| &s.text).collect::<Vec<_>>(), b.iter().map(|s| &s.text).collect::<Vec<_>>());
    assert!(stats.prefill_tokens < stats.prompt_tokens_total, "samples share their prompt's prefill");
    // On this model the texts do not depend on how many sequences decode together.
    for parallel in [1, 16] {
        let other = Engine::start(EngineParams { parallel, ..EngineParams::default() }).unwrap();
        let (c, _) = other.generate(a_req.clone()).await.unwrap();
        assert_eq!(
            a.iter().map(|s| &s.text).collect::<Vec<_>>(),
            c.iter().map(|s| &s.text).collect::<Vec<_>>(),
            "parallel {parallel}"
        );
    }
}

/// A synthetic LoRA adapter (seeded noise, rank 8, on attn_q and attn_v) over the default model.
fn synth_adapter(dir: &std::path::Path) -> std::path::PathBuf {
    let adapter = dir.join("synth.gguf");
    let spec =
        driftwatch::synth::SynthSpec { rank: 8, noise: 0.02, seed: 3, targets: vec!["attn_q".into(), "attn_v".into()] };
    driftwatch::synth::write_adapter(&default_model(), &spec, &adapter).unwrap();
    adapter
}

/// `prompts` numbered prompts × `k` seeded samples each, samples of a prompt adjacent.
fn numbered_jobs(prompts: u32, k: u32) -> Vec<Job> {
    (0..prompts)
        .flat_map(|i| {
            (0..k).map(move |s| Job {
                prompt_id: format!("p{i}"),
                prompt: format!("Question {i}: tell me something about the number {i}."),
                sample_index: s,
                seed: 1000 * i + s,
            })
        })
        .collect()
}

/// With a LoRA adapter too, a sample's text depends only on its model, adapter, prompt,
/// settings and seed: not on `parallel`, nor on which other jobs share the request (a resume
/// keeps only the remaining ones). llama.cpp's llamafile kernels take a product of two or more
/// columns (the adapter's F32 products, the tied Q8_0 output matrix) and ggml's own dot products
/// one column, accumulating in another order: when one-sequence steps went through unpadded,
/// 72.5% of adapter texts differed between parallel 1 and 16. The engine pads them to two
/// columns (`engine/batch.rs`), so at parallel 1 every step carries the padding sequence.
#[tokio::test]
async fn an_adapter_sample_does_not_depend_on_its_batch() {
    let model = default_model();
    let dir = tempfile::tempdir().unwrap();
    let adapter = synth_adapter(dir.path());
    let jobs = numbered_jobs(10, 4);
    let model_spec = ModelSpec {
        adapter: Some(driftwatch::engine::AdapterSpec { path: adapter.clone(), scale: 1.0 }),
        ..ModelSpec::new(&model)
    };
    let run = |parallel: usize, jobs: Vec<Job>| {
        let model_spec = model_spec.clone();
        async move {
            let e = Engine::start(EngineParams { parallel, threads: 2, ..EngineParams::default() }).unwrap();
            let req = GenerationRequest {
                model: model_spec,
                sampling: SamplingParams { max_tokens: 48, ..SamplingParams::default() },
                jobs,
            };
            let (out, stats) = e.generate(req).await.unwrap();
            let texts = out
                .into_iter()
                .map(|s| ((s.prompt_id, s.sample_index), s.text))
                .collect::<std::collections::BTreeMap<_, _>>();
            (texts, stats)
        }
    };
    let (all, stats) = run(16, jobs.clone()).await;
    assert_eq!(all.len(), 40);
    // The tail's sequences were moved down to close gaps (their KV cells with them), and their
    // texts are still those of parallel 1, where nothing moves: the last 12 jobs are the tail.
    assert!(stats.moved > 0, "no sequence was moved: {stats:?}");
    let (one, one_stats) = run(1, jobs[28..].to_vec()).await;
    let (resumed, _) = run(16, jobs[13..].to_vec()).await;
    for (name, other) in [("parallel 1", &one), ("a resume after 13 jobs", &resumed)] {
        let differ: Vec<_> = other.iter().filter(|(k, v)| all.get(*k) != Some(*v)).map(|(k, _)| k).collect();
        assert!(differ.is_empty(), "{name}: {} of {} texts differ: {differ:?}", differ.len(), other.len());
    }
    if driftwatch::engine::build_info().system_info.contains("LLAMAFILE = 1") && cfg!(target_arch = "x86_64") {
        assert_eq!(one_stats.padded_steps, one_stats.decode_calls, "parallel 1: every step is padded");
        assert!(stats.padded_steps < stats.decode_calls / 4, "parallel 16 pads only its last steps: {stats:?}");
    }
}

/// Batch invariance holds, and is claimed in provenance, for the weight types users drop in:
/// the default model (Q4_1 and Q8_0) and copies requantized to Q5_0, to Q6_K (its `ffn_down`
/// matrices: ggml's tiled K-quant kernel takes those products from eight columns on unless
/// the engine turns it off) and to Q4_K_M (Q4_K matrices, which llama.cpp repacks on AVX2
/// unless the engine loads them plain) give the same texts at parallel 3 and 16. With the tiled
/// kernel on, 23 of these 24 Q6_K texts differed; with the repacked copies, 24 of 24 Q4_K_M
/// texts. Needs llama.cpp's `llama-quantize` (`scripts/yardstick.sh quantize`, which
/// `make test` runs).
#[tokio::test]
async fn requantized_models_keep_batch_invariance_and_claim_it() {
    let quantize = driftwatch::setup::cache_dir().join("yardstick/build/bin/llama-quantize");
    assert!(quantize.exists(), "{} is missing: `scripts/yardstick.sh quantize` builds it", quantize.display());
    let dir = tempfile::tempdir().unwrap();
    let jobs = numbered_jobs(6, 4);
    let texts = |model: std::path::PathBuf, parallel: usize| {
        let jobs = jobs.clone();
        async move {
            let e = Engine::start(EngineParams { parallel, threads: 2, ..EngineParams::default() }).unwrap();
            let req = GenerationRequest {
                model: ModelSpec::new(&model),
                sampling: SamplingParams { max_tokens: 32, ..SamplingParams::default() },
                jobs,
            };
            let (out, _) = e.generate(req).await.unwrap();
            out.into_iter().map(|s| s.text).collect::<Vec<_>>()
        }
    };
    for (kind, pure) in [("default", false), ("Q5_0", true), ("Q6_K", true), ("Q4_K_M", false)] {
        let model = if kind == "default" {
            default_model()
        } else {
            let out = dir.path().join(format!("{kind}.gguf"));
            let status = std::process::Command::new(&quantize)
                .arg("--allow-requantize")
                .args(pure.then_some("--pure"))
                .arg(default_model())
                .arg(&out)
                .arg(kind)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status()
                .unwrap();
            assert!(status.success(), "llama-quantize to {kind} failed");
            out
        };
        let types = driftwatch::checkpoint::inspect(&model).unwrap().info.tensors;
        let has = |t: &str| types.iter().any(|x| x.ggml_type.name == t);
        match kind {
            "Q6_K" => assert!(has("Q6_K"), "the Q6_K copy has no Q6_K matrix"),
            "Q4_K_M" => assert!(has("Q4_K") && has("Q6_K"), "the Q4_K_M copy lacks Q4_K or Q6_K matrices"),
            _ => {}
        }
        let (p16, p3) = (texts(model.clone(), 16).await, texts(model.clone(), 3).await);
        let differ = p16.iter().zip(&p3).filter(|(a, b)| a != b).count();
        assert_eq!(differ, 0, "{kind}: {differ} of {} texts differ between parallel 16 and 3", p16.len());
        // What provenance claims: the engine's answer and the weights'.
        let engine = driftwatch::engine::EngineParams::default();
        assert!(
            driftwatch::engine::batch_invariant(&driftwatch::engine::build_info(), &engine)
                && driftwatch::engine::weights_batch_invariant(&model),
            "{kind}: batch invariance holds but is not claimed"
        );
    }
}

/// Measures what a sample's text depends on besides its model, prompt, settings and seed, on
/// the default model with a synthetic LoRA adapter (the crash soak saw 1 of 36 adapter samples
/// differ after a resume): `parallel`, the other jobs of the request (a resume keeps only the
/// remaining ones) and how prompts are grouped for prefill (the order of the jobs). Prints the
/// share of texts that differ from the reference for each; `cargo test -p driftwatch-tests
/// --test default_model -- --ignored --nocapture batch_invariance`.
#[tokio::test]
#[ignore = "a measurement of a few minutes; its figures are in docs/reliability.md"]
async fn batch_invariance_probe() {
    let model = default_model();
    let dir = tempfile::tempdir().unwrap();
    let adapter = synth_adapter(dir.path());
    let jobs = numbered_jobs(25, 8);
    let sampling = SamplingParams { max_tokens: 24, ..SamplingParams::default() };
    for with_adapter in [false, true] {
        let spec = ModelSpec {
            adapter: with_adapter.then(|| driftwatch::engine::AdapterSpec { path: adapter.clone(), scale: 1.0 }),
            ..ModelSpec::new(&model)
        };
        let run = |parallel: usize, jobs: Vec<Job>| {
            let spec = spec.clone();
            let sampling = sampling.clone();
            async move {
                let e = Engine::start(EngineParams { parallel, threads: 2, ..EngineParams::default() }).unwrap();
                let (out, _) = e.generate(GenerationRequest { model: spec, sampling, jobs }).await.unwrap();
                out.into_iter()
                    .map(|s| ((s.prompt_id, s.sample_index), s.text))
                    .collect::<std::collections::HashMap<_, _>>()
            }
        };
        let reference = run(16, jobs.clone()).await;
        let differ = |other: &std::collections::HashMap<(String, u32), String>| {
            other.iter().filter(|(k, v)| reference.get(*k) != Some(*v)).count() as f64 / other.len() as f64
        };
        let p4 = run(4, jobs.clone()).await;
        let p1 = run(1, jobs[..40].to_vec()).await;
        let resumed = run(16, jobs[77..].to_vec()).await;
        let mut reversed_jobs = jobs.clone();
        reversed_jobs.reverse();
        let reversed = run(16, reversed_jobs).await;
        println!(
            "adapter {with_adapter}: differ from parallel 16 — parallel 4: {:.3}, parallel 1 (40 jobs): {:.3}, resumed after 77 of 200: {:.3}, jobs reversed: {:.3}",
            differ(&p4),
            differ(&p1),
            differ(&resumed),
            differ(&reversed)
        );
    }
}
