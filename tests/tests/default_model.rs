//! End to end on the real default model (SmolLM2-135M-Instruct, fetched by `make setup`):
//! batched seeded generation through its own chat template, reproducible run after run.

use driftwatch::engine::{Engine, EngineConfig, FinishReason, GenerationRequest, Job, ModelSpec, SamplingParams};

fn default_model() -> std::path::PathBuf {
    driftwatch::setup::resolve_model("default")
        .unwrap_or_else(|e| panic!("{e}\n(the README's test command runs the set-up that fetches it)"))
}

#[tokio::test]
async fn the_default_model_generates_reproducible_chat_answers() {
    let model = default_model();
    let engine = Engine::start(EngineConfig { parallel: 6, ..EngineConfig::default() }).unwrap();
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
        let other = Engine::start(EngineConfig { parallel, ..EngineConfig::default() }).unwrap();
        let (c, _) = other.generate(a_req.clone()).await.unwrap();
        assert_eq!(
            a.iter().map(|s| &s.text).collect::<Vec<_>>(),
            c.iter().map(|s| &s.text).collect::<Vec<_>>(),
            "parallel {parallel}"
        );
    }
}
