//! The generation engine on tiny GGUF fixtures: batching, prefix sharing, reproducibility,
//! adapters, cancellation, and every kind of bad file turned into a clear error.

use std::sync::OnceLock;

use driftwatch::checkpoint::{self, CheckpointError};
use driftwatch::engine::{
    AdapterSpec, Engine, EngineError, EngineEvent, EngineParams, FinishReason, GenerationRequest, Job, ModelSpec,
    SampleOutput, SamplingParams,
};
use driftwatch::gguf::GgufError;
use driftwatch_tests::{rss_bytes, Fixture, TinyAdapter, TinyModel};

fn engine(parallel: usize) -> Engine {
    Engine::start(EngineParams { threads: 2, parallel, batch_size: 64.max(parallel), ..EngineParams::default() })
        .expect("engine starts")
}

/// Taken by the tests that measure the process's memory or allocate a large context, so that
/// neither runs while the other measures.
static LARGE_MEMORY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(Fixture::new)
}

fn jobs(prompts: &[&str], k: u32, seed0: u32) -> Vec<Job> {
    let mut v = Vec::new();
    for (i, p) in prompts.iter().enumerate() {
        for s in 0..k {
            v.push(Job {
                prompt_id: format!("p{i}"),
                prompt: p.to_string(),
                sample_index: s,
                seed: seed0 + 100 * i as u32 + s,
            });
        }
    }
    v
}

fn sampling(max_tokens: u32) -> SamplingParams {
    SamplingParams { max_tokens, temperature: 1.0, top_k: 0, top_p: 1.0, min_p: 0.0, ..SamplingParams::default() }
}

fn request(model: ModelSpec, sampling: SamplingParams, jobs: Vec<Job>) -> GenerationRequest {
    GenerationRequest { model, sampling, jobs }
}

fn texts(samples: &[SampleOutput]) -> Vec<String> {
    samples.iter().map(|s| s.text.clone()).collect()
}

const PROMPTS: [&str; 5] = [
    "How do I bake bread?",
    "Tell me about the moon.",
    "Write a haiku about rain.",
    "What is two plus two?",
    "Name three colours.",
];

#[tokio::test]
async fn batched_generation_returns_every_job_once() {
    let f = fixture();
    let e = engine(4);
    let req = request(ModelSpec::new(&f.base), sampling(12), jobs(&PROMPTS, 3, 1));
    let (samples, stats) = e.generate(req).await.expect("generation succeeds");
    assert_eq!(samples.len(), 15);
    for (i, s) in samples.iter().enumerate() {
        assert_eq!(s.job_index, i);
        assert!(s.completion_tokens <= 12);
        assert!(matches!(s.finish_reason, FinishReason::Length | FinishReason::Stop), "{s:?}");
        assert!(s.prompt_tokens > 5, "the chat template was applied: {}", s.prompt_tokens);
    }
    assert_eq!(stats.sequences, 15);
    assert_eq!(stats.generated_tokens, samples.iter().map(|s| s.completion_tokens as u64).sum::<u64>());
    // Prefix sharing: each distinct prompt is prefilled once (all but its last token), and each
    // sample decodes the last token itself.
    let per_prompt: u64 = samples.iter().step_by(3).map(|s| s.prompt_tokens as u64).sum();
    assert_eq!(stats.prompt_tokens_total, 3 * per_prompt);
    assert_eq!(stats.prefill_tokens, per_prompt - 5 + 15);
    // Samples of one prompt with different seeds differ.
    assert!(samples[0].text != samples[1].text || samples[1].text != samples[2].text);
}

#[tokio::test]
async fn same_seed_and_settings_give_the_same_text() {
    let f = fixture();
    let e = engine(4);
    let req = request(ModelSpec::new(&f.base), sampling(16), jobs(&PROMPTS, 3, 40));
    let (a, _) = e.generate(req.clone()).await.unwrap();
    let (b, _) = e.generate(req.clone()).await.unwrap();
    assert_eq!(texts(&a), texts(&b));
    // A fresh engine (a new process, as far as llama.cpp's state goes) agrees too.
    let (c, _) = engine(4).generate(req).await.unwrap();
    assert_eq!(texts(&a), texts(&c));
    // Other seeds give other texts.
    let other = request(ModelSpec::new(&f.base), sampling(16), jobs(&PROMPTS, 3, 9000));
    let (d, _) = e.generate(other).await.unwrap();
    assert_ne!(texts(&a), texts(&d));
}

#[tokio::test]
async fn a_sample_does_not_depend_on_the_other_jobs_in_its_batches() {
    // What crash-safe resumption relies on: generating only the jobs left after an interruption
    // gives exactly the texts the uninterrupted request gave them.
    let f = fixture();
    let e = engine(4);
    let all = jobs(&PROMPTS, 4, 300);
    let (full, _) = e.generate(request(ModelSpec::new(&f.base), sampling(24), all.clone())).await.unwrap();
    for cut in [1, 7, 13] {
        let (rest, _) = e.generate(request(ModelSpec::new(&f.base), sampling(24), all[cut..].to_vec())).await.unwrap();
        assert_eq!(texts(&full[cut..]), texts(&rest), "resuming at job {cut} changed the texts");
    }
    // Interleaving the jobs differently does not change any text either.
    let mut shuffled = all.clone();
    shuffled.reverse();
    let (rev, _) = e.generate(request(ModelSpec::new(&f.base), sampling(24), shuffled)).await.unwrap();
    let mut rev_texts = texts(&rev);
    rev_texts.reverse();
    assert_eq!(texts(&full), rev_texts);
}

#[tokio::test]
async fn greedy_samples_of_one_prompt_agree_whether_prefix_is_shared_or_not() {
    let f = fixture();
    let e = engine(4);
    let greedy = SamplingParams::greedy(10);
    // Four greedy samples of one prompt share its prefill; they must all equal each other.
    let (shared, _) =
        e.generate(request(ModelSpec::new(&f.base), greedy.clone(), jobs(&PROMPTS[..1], 4, 0))).await.unwrap();
    assert!(shared.iter().all(|s| s.text == shared[0].text), "{:?}", texts(&shared));
    // With one sequence at a time (parallel = 1) the prefix is shared across time.
    let (serial, _) =
        engine(1).generate(request(ModelSpec::new(&f.base), greedy, jobs(&PROMPTS[..1], 3, 0))).await.unwrap();
    assert!(serial.iter().all(|s| s.text == serial[0].text));
    assert!(!shared[0].text.is_empty());
}

#[tokio::test]
async fn stop_strings_end_a_sample_and_are_not_part_of_it() {
    let f = fixture();
    let e = engine(2);
    let (free, _) = e
        .generate(request(ModelSpec::new(&f.base), SamplingParams::greedy(24), jobs(&PROMPTS[..1], 1, 0)))
        .await
        .unwrap();
    let text = &free[0].text;
    // Stop at a piece of the text that greedy decoding is known to produce (ASCII, since a
    // random model also emits byte tokens that are not valid UTF-8 on their own).
    let b = text.as_bytes();
    let at = (2..b.len().saturating_sub(1))
        .find(|&i| b[i].is_ascii_alphanumeric() && b[i + 1].is_ascii_alphanumeric())
        .unwrap_or_else(|| panic!("no ASCII pair in greedy text {text:?}"));
    let stop = String::from_utf8(b[at..at + 2].to_vec()).unwrap();
    let first = text.find(&stop).unwrap();
    let params = SamplingParams { stop: vec![stop.clone()], ..SamplingParams::greedy(24) };
    let (stopped, _) = e.generate(request(ModelSpec::new(&f.base), params, jobs(&PROMPTS[..1], 1, 0))).await.unwrap();
    assert_eq!(stopped[0].finish_reason, FinishReason::Stop);
    assert_eq!(stopped[0].text, text[..first]);
}

#[tokio::test]
async fn an_adapter_changes_the_output_and_scale_zero_does_not() {
    let f = fixture();
    let e = engine(2);
    let greedy = SamplingParams::greedy(16);
    let base = ModelSpec::new(&f.base);
    let with = |scale| ModelSpec { adapter: Some(AdapterSpec { path: f.adapter.clone(), scale }), ..base.clone() };
    let (b, _) = e.generate(request(base.clone(), greedy.clone(), jobs(&PROMPTS, 1, 0))).await.unwrap();
    let (a, _) = e.generate(request(with(1.0), greedy.clone(), jobs(&PROMPTS, 1, 0))).await.unwrap();
    let (z, _) = e.generate(request(with(0.0), greedy.clone(), jobs(&PROMPTS, 1, 0))).await.unwrap();
    assert_ne!(texts(&a), texts(&b), "the adapter had no effect");
    assert_eq!(texts(&z), texts(&b), "an adapter at scale 0 must leave the base model's output unchanged");
    // The base model is shared and unchanged after the adapter is released.
    let (b2, _) = e.generate(request(base, greedy, jobs(&PROMPTS, 1, 0))).await.unwrap();
    assert_eq!(texts(&b2), texts(&b));
}

#[test]
fn many_adapters_do_not_grow_memory() {
    // The process's RSS is measured: no test that allocates a large context runs meanwhile.
    let _alone = LARGE_MEMORY.blocking_lock();
    let f = fixture();
    // A large adapter (rank 256 on every matrix, about 2.6 MB) makes a leak easy to see.
    let big = TinyAdapter {
        rank: 256,
        targets: vec!["attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"],
        ..TinyAdapter::default()
    };
    let path = f.path("big-adapter.gguf");
    big.write(&f.base, &path).unwrap();
    let size = std::fs::metadata(&path).unwrap().len();
    let e = engine(1);
    let spec = ModelSpec { adapter: Some(AdapterSpec { path: path.clone(), scale: 1.0 }), ..ModelSpec::new(&f.base) };
    let run = |e: &Engine| {
        e.generate_blocking(request(spec.clone(), SamplingParams::greedy(2), jobs(&PROMPTS[..1], 1, 0))).unwrap()
    };
    for _ in 0..5 {
        run(&e);
    }
    let before = rss_bytes().expect("linux /proc");
    let n = 40u64;
    for _ in 0..n {
        run(&e);
    }
    let growth = rss_bytes().unwrap().saturating_sub(before);
    // Leaking every adapter would grow by n × size (≈ 100 MB); allow allocator noise.
    assert!(growth < n * size / 4, "memory grew by {growth} bytes over {n} adapter loads of {size} bytes each");
}

#[tokio::test]
async fn cancellation_ends_running_sequences_and_drops_the_rest() {
    let f = fixture();
    let e = engine(2);
    let mut p = sampling(400);
    p.ignore_eos = true;
    let mut stream = e.submit(request(ModelSpec::new(&f.base), p, jobs(&PROMPTS, 4, 0)));
    let mut samples = Vec::new();
    let mut cancelled = false;
    let mut done = None;
    while let Some(ev) = stream.next().await {
        match ev {
            EngineEvent::Progress(_) | EngineEvent::Started(_) if !cancelled => {
                stream.cancel();
                cancelled = true;
            }
            EngineEvent::Sample(s) => samples.push(s),
            EngineEvent::Done(r) => done = Some(r),
            _ => {}
        }
    }
    done.expect("a Done event").expect("a cancelled request ends cleanly");
    assert!(samples.len() < 20, "cancellation stopped the request early");
    assert!(samples.iter().all(|s| s.finish_reason == FinishReason::Cancelled), "{samples:?}");
    // The engine serves the next request normally.
    let (next, _) = e.generate(request(ModelSpec::new(&f.base), sampling(4), jobs(&PROMPTS[..1], 1, 0))).await.unwrap();
    assert_eq!(next.len(), 1);
}

#[tokio::test]
async fn a_prompt_too_long_for_the_context_fails_alone() {
    let f = fixture();
    let e = engine(2);
    let long = "word ".repeat(3000);
    let mut js = jobs(&PROMPTS[..2], 1, 0);
    js.insert(1, Job { prompt_id: "long".into(), prompt: long, sample_index: 0, seed: 0 });
    let (samples, _) = e.generate(request(ModelSpec::new(&f.base), sampling(8), js)).await.unwrap();
    assert_eq!(samples.len(), 3);
    assert_eq!(samples[1].finish_reason, FinishReason::Error);
    assert!(samples[1].error.as_deref().unwrap().contains("context"), "{:?}", samples[1].error);
    assert_ne!(samples[0].finish_reason, FinishReason::Error);
    assert_ne!(samples[2].finish_reason, FinishReason::Error);
}

/// `engine.max_prompt_tokens` reaches the engine (it used to be validated and hashed, then
/// dropped): a longer templated prompt is an error on its own jobs, the others run.
#[tokio::test]
async fn prompts_over_max_prompt_tokens_are_errors_and_the_rest_run() {
    let f = fixture();
    let free = engine(2);
    let long = "word ".repeat(40);
    let mut js = jobs(&PROMPTS[..2], 1, 0);
    js.insert(1, Job { prompt_id: "long".into(), prompt: long, sample_index: 0, seed: 0 });
    let (unlimited, _) = free.generate(request(ModelSpec::new(&f.base), sampling(4), js.clone())).await.unwrap();
    assert!(unlimited.iter().all(|s| s.finish_reason != FinishReason::Error), "no limit, no error");
    let short = unlimited[0].prompt_tokens.max(unlimited[2].prompt_tokens);
    assert!(unlimited[1].prompt_tokens > short);
    drop(free);

    let limited = Engine::start(EngineParams {
        threads: 2,
        parallel: 2,
        batch_size: 64,
        max_prompt_tokens: Some(short),
        ..EngineParams::default()
    })
    .unwrap();
    let (samples, _) = limited.generate(request(ModelSpec::new(&f.base), sampling(4), js)).await.unwrap();
    assert_eq!(samples.len(), 3);
    assert_eq!(samples[1].finish_reason, FinishReason::Error);
    let msg = samples[1].error.as_deref().unwrap();
    assert!(msg.contains(&format!("engine.max_prompt_tokens ({short})")), "{msg}");
    assert_eq!(texts(&[samples[0].clone(), samples[2].clone()]), texts(&[unlimited[0].clone(), unlimited[2].clone()]));
}

/// `engine.n_ctx` reaches the engine: the context holds `n_ctx / parallel` per sequence, and a
/// prompt that does not fit in its share is an error naming `engine.n_ctx`.
#[tokio::test]
async fn a_configured_n_ctx_sizes_the_context_and_limits_each_sequence() {
    let f = fixture();
    let max_tokens = 4u32;
    let free = engine(2);
    let (probe, _) =
        free.generate(request(ModelSpec::new(&f.base), sampling(max_tokens), jobs(&PROMPTS[..1], 1, 0))).await.unwrap();
    let short = probe[0].prompt_tokens;
    drop(free);

    let room = short + max_tokens;
    let n_ctx = 2 * room;
    let e = Engine::start(EngineParams {
        threads: 2,
        parallel: 2,
        batch_size: 64,
        n_ctx: Some(n_ctx),
        ..EngineParams::default()
    })
    .unwrap();
    let long = "word ".repeat(40);
    let mut js = jobs(&PROMPTS[..1], 2, 0);
    js.push(Job { prompt_id: "long".into(), prompt: long, sample_index: 0, seed: 0 });
    let mut stream = e.submit(request(ModelSpec::new(&f.base), sampling(max_tokens), js));
    let mut info = None;
    let mut samples = Vec::new();
    while let Some(ev) = stream.next().await {
        match ev {
            EngineEvent::Started(i) => info = Some(i),
            EngineEvent::Sample(s) => samples.push(s),
            EngineEvent::Done(r) => {
                r.unwrap();
            }
            EngineEvent::Progress(_) => {}
        }
    }
    let info = info.expect("started");
    // Two running sequences, a spare (the padding sequence) and three prompt holders, each with
    // its share of n_ctx (llama.cpp allocates streams in multiples of 256 tokens).
    assert_eq!(info.n_ctx, 6 * room.div_ceil(256) * 256, "{info:?}");
    samples.sort_by_key(|s| s.job_index);
    assert_ne!(samples[0].finish_reason, FinishReason::Error, "{:?}", samples[0].error);
    assert_ne!(samples[1].finish_reason, FinishReason::Error);
    assert_eq!(samples[2].finish_reason, FinishReason::Error);
    let msg = samples[2].error.as_deref().unwrap();
    assert!(msg.contains(&format!("engine.n_ctx ({n_ctx})")), "{msg}");
}

/// One limit on `parallel`: the engine refuses exactly what it cannot run (it accepted 128,
/// which needs 257 of llama.cpp's 256 sequences), and runs the largest value it accepts.
#[tokio::test]
async fn the_parallel_limit_is_the_one_the_engine_can_run() {
    // 255 KV streams: not while `many_adapters_do_not_grow_memory` measures the process's RSS.
    let _alone = LARGE_MEMORY.lock().await;
    use driftwatch::engine::MAX_PARALLEL;
    let too_many =
        Engine::start(EngineParams { parallel: MAX_PARALLEL + 1, batch_size: 512, ..EngineParams::default() });
    assert!(too_many.unwrap_err().to_string().contains(&format!("between 1 and {MAX_PARALLEL}")));
    let f = fixture();
    let e =
        Engine::start(EngineParams { threads: 2, parallel: MAX_PARALLEL, batch_size: 512, ..EngineParams::default() })
            .unwrap();
    let js: Vec<Job> = (0..MAX_PARALLEL as u32)
        .map(|i| Job {
            prompt_id: format!("p{}", i % 5),
            prompt: PROMPTS[(i % 5) as usize].into(),
            sample_index: i / 5,
            seed: i,
        })
        .collect();
    let (samples, _) =
        e.generate(request(ModelSpec::new(&f.base), sampling(2), js)).await.expect("parallel = MAX_PARALLEL runs");
    assert_eq!(samples.len(), MAX_PARALLEL);
    assert!(
        samples.iter().all(|s| s.finish_reason != FinishReason::Error),
        "{:?}",
        samples.iter().find(|s| s.error.is_some())
    );
}

#[tokio::test]
async fn a_model_without_chat_template_needs_one_configured() {
    let f = fixture();
    let path = f.path("no-template.gguf");
    TinyModel { chat_template: false, ..TinyModel::default() }.write(&path).unwrap();
    let e = engine(2);
    let err = e.generate(request(ModelSpec::new(&path), sampling(4), jobs(&PROMPTS[..1], 1, 0))).await.unwrap_err();
    assert!(matches!(err, EngineError::NoChatTemplate { .. }), "{err}");
    assert!(err.to_string().contains("chat_template"));
    let spec = ModelSpec { chat_template: Some("chatml".into()), ..ModelSpec::new(&path) };
    let (s, _) = e.generate(request(spec, sampling(4), jobs(&PROMPTS[..1], 1, 0))).await.unwrap();
    assert_eq!(s.len(), 1);
    let spec = ModelSpec { raw_prompts: true, ..ModelSpec::new(&path) };
    e.generate(request(spec, sampling(4), jobs(&PROMPTS[..1], 1, 0))).await.expect("raw prompts need no template");
}

#[tokio::test]
async fn bad_files_are_clear_errors_and_the_engine_keeps_serving() {
    let f = fixture();
    let e = engine(2);
    let bytes = std::fs::read(&f.base).unwrap();
    let truncated = f.path("truncated.gguf");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let empty = f.path("empty.gguf");
    std::fs::write(&empty, b"").unwrap();
    let text = f.path("text.gguf");
    std::fs::write(&text, b"this is not a model at all, just some text").unwrap();
    let missing = f.path("missing.gguf");

    let cases: [(&std::path::Path, &str); 4] =
        [(&truncated, "truncated"), (&empty, "empty"), (&text, "not a GGUF file"), (&missing, "no such file")];
    for (path, expect) in cases {
        let err = e.generate(request(ModelSpec::new(path), sampling(4), jobs(&PROMPTS[..1], 1, 0))).await.unwrap_err();
        assert!(err.to_string().contains(expect), "{}: expected '{expect}' in '{err}'", path.display());
        // The engine is still alive and well.
        let ok = e.generate(request(ModelSpec::new(&f.base), sampling(2), jobs(&PROMPTS[..1], 1, 0))).await;
        assert!(ok.is_ok(), "the engine failed after a bad file: {ok:?}");
    }
    // An adapter given as the model, and a model given as the adapter.
    let err =
        e.generate(request(ModelSpec::new(&f.adapter), sampling(4), jobs(&PROMPTS[..1], 1, 0))).await.unwrap_err();
    assert!(err.to_string().contains("expected a whole model"), "{err}");
    let spec = ModelSpec { adapter: Some(AdapterSpec { path: f.base.clone(), scale: 1.0 }), ..ModelSpec::new(&f.base) };
    let err = e.generate(request(spec, sampling(4), jobs(&PROMPTS[..1], 1, 0))).await.unwrap_err();
    assert!(err.to_string().contains("expected a LoRA adapter"), "{err}");
}

#[test]
fn adapters_for_other_models_are_rejected_before_llama_cpp() {
    let f = fixture();
    let base = checkpoint::inspect_model(&f.base).unwrap();
    assert!(checkpoint::inspect_adapter_for(&f.adapter, &base).is_ok());

    let other_arch = f.path("qwen-adapter.gguf");
    TinyAdapter::default()
        .write_for(&TinyModel { architecture: "qwen2".into(), ..f.model.clone() }, &other_arch)
        .unwrap();
    match checkpoint::inspect_adapter_for(&other_arch, &base) {
        Err(CheckpointError::AdapterMismatch { reason, .. }) => assert!(reason.contains("qwen2"), "{reason}"),
        other => panic!("expected a mismatch, got {other:?}"),
    }
    // Same architecture, other shapes (an adapter trained for a wider model).
    let wide = TinyModel { n_embd: 128, n_ff: 256, ..TinyModel::default() };
    let wide_adapter = f.path("wide-adapter.gguf");
    TinyAdapter::default().write_for(&wide, &wide_adapter).unwrap();
    match checkpoint::inspect_adapter_for(&wide_adapter, &base) {
        Err(CheckpointError::AdapterMismatch { reason, .. }) => assert!(reason.contains("blk.0."), "{reason}"),
        other => panic!("expected a mismatch, got {other:?}"),
    }
    // A truncated adapter.
    let bytes = std::fs::read(&f.adapter).unwrap();
    let cut = f.path("cut-adapter.gguf");
    std::fs::write(&cut, &bytes[..bytes.len() - 100]).unwrap();
    match checkpoint::inspect_adapter_for(&cut, &base) {
        Err(CheckpointError::Gguf { cause: GgufError::TensorOutOfBounds { .. }, .. }) => {}
        other => panic!("expected truncation, got {other:?}"),
    }
}

#[tokio::test]
async fn invalid_settings_are_refused_with_the_setting_named() {
    let f = fixture();
    let e = engine(2);
    let bad = SamplingParams { top_p: 1.5, ..SamplingParams::default() };
    let err = e.generate(request(ModelSpec::new(&f.base), bad, jobs(&PROMPTS[..1], 1, 0))).await.unwrap_err();
    assert!(err.to_string().contains("top_p"), "{err}");
    assert!(Engine::start(EngineParams { parallel: 0, ..EngineParams::default() }).is_err());
}

/// llama.cpp's AMX matrix kernels crash on the default model on machines that have AMX
/// (ggml-org/llama.cpp#20824, unfixed); `.cargo/config.toml` builds llama.cpp without them.
/// A build that has them in would crash there on the first decode.
#[test]
fn the_build_leaves_out_llama_cpp_amx_kernels() {
    let info = driftwatch::engine::build_info();
    assert!(
        !info.system_info.contains("AMX_INT8 = 1"),
        "llama.cpp was built with its AMX kernels (CFLAGS/CXXFLAGS from .cargo/config.toml not applied? a target folder configured before they were set needs `cargo clean -p llama-cpp-sys-2`): {}",
        info.system_info
    );
}

/// llama.cpp's llamafile kernels take matrix products of two or more columns, and ggml's own dot
/// products take one column, accumulating in another order: when the engine let one-column
/// steps through, 72.5% of adapter texts differed between parallel 1 and 16. `.cargo/config.toml`
/// builds them in (they are 4-9% of decode speed), the engine pads one-sequence steps to two
/// columns on x86-64, and provenance claims batch invariance only there (never with a unified
/// KV cache); without the kernels every product is ggml's own, so that build is invariant too
/// (on x86-64, where it was measured), unless the engine's `batch_invariant` is off.
#[test]
fn the_build_has_llamafile_kernels_and_says_when_it_is_batch_invariant() {
    let info = driftwatch::engine::build_info();
    assert!(
        info.system_info.contains("LLAMAFILE = 1"),
        "llama.cpp was built without its llamafile kernels (GGML_LLAMAFILE=ON from .cargo/config.toml not applied?): {}",
        info.system_info
    );
    let cpu = EngineParams::default();
    assert_eq!(driftwatch::engine::batch_invariant(&info, &cpu), cfg!(target_arch = "x86_64"));
    assert!(!driftwatch::engine::batch_invariant(&info, &EngineParams { kv_unified: true, ..EngineParams::default() }));
    let unpadded = EngineParams { batch_invariant: false, ..EngineParams::default() };
    assert!(!driftwatch::engine::batch_invariant(&info, &unpadded), "one-sequence steps unpadded: not claimed");
    let without = driftwatch::engine::BuildInfo {
        system_info: info.system_info.replace("LLAMAFILE = 1", "LLAMAFILE = 0"),
        ..info
    };
    assert_eq!(driftwatch::engine::batch_invariant(&without, &cpu), cfg!(target_arch = "x86_64"));
    // `batch_invariant: false` also keeps K-quant models' repacked copies: never claimed, with
    // or without the kernels (before, a build without them claimed it for such a model).
    assert!(!driftwatch::engine::batch_invariant(&without, &unpadded), "invariance turned off: not claimed");
}

/// A step with one sequence carries the padding sequence (so that no product has one column),
/// and only then: at parallel 1 every step, at parallel 4 only the last steps of the request;
/// with `batch_invariant` off, none. The padded texts are those of the batched run (the
/// default model's adapter test checks the same where the kernels differ measurably).
#[tokio::test]
async fn one_sequence_steps_are_padded_to_two() {
    if !cfg!(target_arch = "x86_64") {
        return;
    }
    // Three engines at once would show in the adapter test's measure of the process's memory.
    let _alone = LARGE_MEMORY.lock().await;
    let f = fixture();
    // Nine jobs at parallel 4: the last one runs alone.
    let js = jobs(&PROMPTS, 2, 700)[..9].to_vec();
    let (batched, four) = engine(4).generate(request(ModelSpec::new(&f.base), sampling(12), js.clone())).await.unwrap();
    assert!(four.padded_steps > 0 && four.padded_steps < four.decode_calls / 2, "{four:?}");
    let (alone, one) = engine(1).generate(request(ModelSpec::new(&f.base), sampling(12), js.clone())).await.unwrap();
    assert_eq!(one.padded_steps, one.decode_calls, "{one:?}");
    assert_eq!(texts(&batched), texts(&alone));
    let unpadded =
        Engine::start(EngineParams { threads: 2, parallel: 1, batch_invariant: false, ..EngineParams::default() })
            .unwrap();
    let (_, none) = unpadded.generate(request(ModelSpec::new(&f.base), sampling(12), js)).await.unwrap();
    assert_eq!(none.padded_steps, 0, "{none:?}");
}
