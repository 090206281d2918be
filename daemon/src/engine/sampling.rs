//! Sampling settings and the llama.cpp sampler chain built from them, one chain per job.

use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::logit_bias::LlamaLogitBias;
use llama_cpp_2::token::LlamaToken;
use serde::{Deserialize, Serialize};

/// How tokens are chosen. Every job gets its own chain, seeded with the job's seed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SamplingParams {
    /// Softmax temperature (ignored when `greedy`).
    pub temperature: f32,
    /// Nucleus sampling threshold; 1.0 disables it.
    pub top_p: f32,
    /// Keep only the k most likely tokens; 0 disables it.
    pub top_k: i32,
    /// Drop tokens below `min_p` × the top probability; 0 disables it.
    pub min_p: f32,
    /// Repetition penalty; 1.0 disables it.
    pub repeat_penalty: f32,
    /// How many recent tokens the repetition penalty looks at.
    pub repeat_last_n: i32,
    /// Always take the most likely token (no seed involved).
    pub greedy: bool,
    /// Most tokens generated per sample.
    pub max_tokens: u32,
    /// Generation stops when one of these strings appears (it is not part of the text).
    pub stop: Vec<String>,
    /// Never stop at an end-of-generation token (benchmarks: exactly `max_tokens` per sample).
    pub ignore_eos: bool,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 0.7,
            top_p: 0.95,
            top_k: 40,
            min_p: 0.05,
            repeat_penalty: 1.1,
            repeat_last_n: 64,
            greedy: false,
            max_tokens: 256,
            stop: Vec::new(),
            ignore_eos: false,
        }
    }
}

impl SamplingParams {
    /// Greedy decoding with `max_tokens`.
    pub fn greedy(max_tokens: u32) -> Self {
        SamplingParams { greedy: true, max_tokens, ..Default::default() }
    }

    /// Checks the values; the message names the offending setting.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return Err(format!("temperature must be >= 0, not {}", self.temperature));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(format!("top_p must be in (0, 1], not {}", self.top_p));
        }
        if self.top_k < 0 {
            return Err(format!("top_k must be >= 0, not {}", self.top_k));
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return Err(format!("min_p must be in [0, 1], not {}", self.min_p));
        }
        if !(self.repeat_penalty.is_finite() && self.repeat_penalty > 0.0) {
            return Err(format!("repeat_penalty must be > 0, not {}", self.repeat_penalty));
        }
        if self.repeat_last_n < 0 {
            return Err(format!("repeat_last_n must be >= 0, not {}", self.repeat_last_n));
        }
        if self.max_tokens == 0 {
            return Err("max_tokens must be at least 1".into());
        }
        if self.stop.iter().any(String::is_empty) {
            return Err("stop strings must not be empty".into());
        }
        Ok(())
    }

    /// The sampler chain for one job.
    pub(crate) fn chain(&self, seed: u32, n_vocab: i32, eog: &[LlamaToken]) -> LlamaSampler {
        let mut s = Vec::new();
        if self.ignore_eos && !eog.is_empty() {
            let bias: Vec<LlamaLogitBias> = eog.iter().map(|&t| LlamaLogitBias::new(t, f32::NEG_INFINITY)).collect();
            s.push(LlamaSampler::logit_bias(n_vocab, &bias));
        }
        if self.repeat_penalty != 1.0 && self.repeat_last_n != 0 {
            s.push(LlamaSampler::penalties(n_vocab, self.repeat_last_n, self.repeat_penalty, 0.0, 0.0));
        }
        if self.greedy || self.temperature == 0.0 {
            s.push(LlamaSampler::greedy());
        } else {
            if self.top_k > 0 {
                s.push(LlamaSampler::top_k(self.top_k));
            }
            if self.top_p < 1.0 {
                s.push(LlamaSampler::top_p(self.top_p, 1));
            }
            if self.min_p > 0.0 {
                s.push(LlamaSampler::min_p(self.min_p, 1));
            }
            s.push(LlamaSampler::temp(self.temperature));
            s.push(LlamaSampler::dist(seed));
        }
        LlamaSampler::chain_simple(s)
    }
}
