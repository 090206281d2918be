//! Sampling settings, the llama.cpp sampler chain built from them (one chain per job), and
//! [`JobSampler`], which runs that chain on a shortlist of the logits when the chain keeps only
//! the top k anyway.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::data::LlamaTokenData;
use llama_cpp_2::token::data_array::LlamaTokenDataArray;
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

/// One job's token chooser: its llama.cpp chain ([`SamplingParams::chain`]), fed a shortlist of
/// the logits instead of the whole vocabulary when the chain keeps only the top k (or, greedy,
/// the top 1).
///
/// Why it chooses the same tokens: before top-k, the chain only *lowers* logits (the EOG
/// biases of `ignore_eos` are −∞; a repetition penalty of at least 1 divides a positive logit
/// and multiplies a negative one by it), and only of at most `m` tokens: the biased ones and
/// the distinct tokens of the penalty window. Every other token keeps its logit. So the k best
/// after those changes are among the k + m best before them: a token outside the k + m best
/// has k + m tokens above it, of which at most m are lowered. The chain, given those k + m
/// candidates in vocabulary order, keeps the same k, and every step after top-k sees the same
/// candidates. The one difference: llama.cpp's partial sort leaves exactly equal logits in an
/// order that depends on its whole input, so a tie within the top k may be ordered otherwise
/// and `dist` then pick the other of the tied tokens. A penalty below 1 raises logits, so that
/// chain (like one without top-k) gets the whole vocabulary.
///
/// What it saves, per token and sequence, is llama.cpp copying the whole vocabulary into a
/// candidate array, looking each entry up in the penalty table and partially sorting it: on
/// the default model (49k tokens) choosing 8,192 tokens took about 3 s of a 43 s run before
/// and 0.9 s after, with the same texts. The unit test below checks the choices against the
/// chain on the whole vocabulary.
pub(crate) struct JobSampler {
    chain: LlamaSampler,
    /// k (1 when greedy) plus the tokens the chain biases; `None`: the chain needs every logit
    /// (top-k off and not greedy).
    shortlist_base: Option<usize>,
    /// The penalty window (`repeat_last_n`) when the chain penalises repeats, else 0.
    penalty_window: usize,
    /// Tokens accepted so far.
    accepted: usize,
    heap: BinaryHeap<Reverse<(OrderedLogit, i32)>>,
}

/// Logits tested together against the shortlist's floor in [`JobSampler::choose`]'s scan.
const SCAN_BLOCK: usize = 64;

/// A logit ordered by `f32::total_cmp`.
#[derive(Debug, Clone, Copy, PartialEq)]
struct OrderedLogit(f32);

impl Eq for OrderedLogit {}

impl PartialOrd for OrderedLogit {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for OrderedLogit {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}

impl JobSampler {
    /// The sampler of one job: `params`' chain seeded with `seed`.
    pub(crate) fn new(params: &SamplingParams, seed: u32, n_vocab: i32, eog: &[LlamaToken]) -> JobSampler {
        let greedy = params.greedy || params.temperature == 0.0;
        let k = if greedy { Some(1) } else { (params.top_k > 0).then_some(params.top_k as usize) };
        let biased = if params.ignore_eos { eog.len() } else { 0 };
        let penalises = params.repeat_penalty != 1.0 && params.repeat_last_n != 0;
        // A penalty below 1 raises the logits it touches: the shortlist argument needs them
        // lowered or left alone.
        let k = if penalises && params.repeat_penalty < 1.0 { None } else { k };
        JobSampler {
            chain: params.chain(seed, n_vocab, eog),
            shortlist_base: k.map(|k| k + biased),
            penalty_window: if penalises { params.repeat_last_n as usize } else { 0 },
            accepted: 0,
            heap: BinaryHeap::new(),
        }
    }

    /// Chooses the next token from the `idx`-th logits of the last decode, and records it in
    /// the chain (the repetition penalty's window), as `llama_sampler_sample` does.
    pub(crate) fn sample(&mut self, ctx: &LlamaContext<'_>, idx: i32) -> LlamaToken {
        if self.shortlist_base.is_none() {
            self.accepted += 1;
            return self.chain.sample(ctx, idx);
        }
        self.sample_logits(ctx.get_logits_ith(idx))
    }

    /// [`JobSampler::sample`] on a row of logits.
    pub(crate) fn sample_logits(&mut self, logits: &[f32]) -> LlamaToken {
        let n = match self.shortlist_base {
            Some(base) => base + self.accepted.min(self.penalty_window),
            None => logits.len(),
        };
        let token = self.choose(logits, n);
        self.chain.accept(token);
        self.accepted += 1;
        token
    }

    /// The chain's choice among the `n` highest of `logits`, given to it in vocabulary order.
    fn choose(&mut self, logits: &[f32], n: usize) -> LlamaToken {
        let candidates: Vec<LlamaTokenData> = if n >= logits.len() {
            (0..).zip(logits).map(|(id, &l)| LlamaTokenData::new(LlamaToken(id), l, 0.0)).collect()
        } else {
            // A min-heap of the n best so far (`Reverse`: its top is the lowest kept; among
            // equal logits the higher id, ids being negated). Once full, a logit enters only if
            // it beats the lowest kept (a tie keeps the earlier token), so the scan over the
            // vocabulary is mostly one comparison with `floor`.
            //
            // Once the heap is full, a block of logits none of which beats `floor` is passed over
            // whole: that test has no early exit, so it compiles to vector compares (8 or 16
            // logits an instruction) instead of a compare and a branch per logit. Within a block
            // that has a candidate, every logit is taken in order as before, so the choice is
            // the same.
            self.heap.clear();
            let mut floor = f32::NEG_INFINITY;
            let mut id = 0i32;
            for block in logits.chunks(SCAN_BLOCK) {
                if self.heap.len() == n && !block.iter().fold(false, |any, &l| any | (l > floor)) {
                    id += block.len() as i32;
                    continue;
                }
                for &l in block {
                    let this = id;
                    id += 1;
                    if self.heap.len() < n {
                        self.heap.push(Reverse((OrderedLogit(l), -this)));
                    } else if l > floor {
                        if let Some(mut lowest) = self.heap.peek_mut() {
                            *lowest = Reverse((OrderedLogit(l), -this));
                        }
                    } else {
                        continue;
                    }
                    if self.heap.len() == n {
                        floor = self.heap.peek().map_or(f32::NEG_INFINITY, |Reverse((l, _))| l.0);
                    }
                }
            }
            let mut kept: Vec<LlamaTokenData> =
                self.heap.drain().map(|Reverse((l, id))| LlamaTokenData::new(LlamaToken(-id), l.0, 0.0)).collect();
            kept.sort_unstable_by_key(LlamaTokenData::id);
            kept
        };
        let mut array = LlamaTokenDataArray::new(candidates, false);
        array.apply_sampler(&mut self.chain);
        array.selected_token().expect("a sampler chain ending in greedy or dist selects a token")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reproducible stream of logits: noise over `n_vocab` tokens with a favoured few (which
    /// the end tokens are among), so that tokens repeat, the penalty pushes them down past the
    /// top k, and tokens outside the raw top k take their place.
    fn logits(n_vocab: usize, rng: &mut u64) -> Vec<f32> {
        (0..n_vocab)
            .map(|i| {
                *rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                let noise = (*rng >> 40) as f32 / (1u64 << 24) as f32;
                let favoured = if i < 24 { 2.5 } else { 0.0 };
                favoured + 6.0 * noise - 3.0
            })
            .collect()
    }

    /// The shortlist makes exactly the choices of llama.cpp's chain on the whole vocabulary,
    /// token after token (its seeded RNG, its penalty window), for every kind of chain.
    #[test]
    fn the_shortlist_chooses_what_the_whole_vocabulary_chooses() {
        let n_vocab = 4096;
        let eog = [LlamaToken(2), LlamaToken(7)];
        let base = SamplingParams::default();
        let cases = [
            ("default", base.clone()),
            ("ignore_eos", SamplingParams { ignore_eos: true, ..base.clone() }),
            ("no penalty", SamplingParams { repeat_penalty: 1.0, ..base.clone() }),
            ("strong penalty, short window", SamplingParams { repeat_penalty: 3.0, repeat_last_n: 8, ..base.clone() }),
            ("a penalty below 1 (a bonus)", SamplingParams { repeat_penalty: 0.8, ..base.clone() }),
            ("greedy with penalty", SamplingParams { greedy: true, ..base.clone() }),
            (
                "greedy, ignore_eos",
                SamplingParams { greedy: true, ignore_eos: true, repeat_penalty: 1.0, ..base.clone() },
            ),
            ("top_k 1", SamplingParams { top_k: 1, ..base.clone() }),
            ("top_k off", SamplingParams { top_k: 0, ..base.clone() }),
            ("hot", SamplingParams { temperature: 1.5, top_p: 1.0, min_p: 0.0, ..base.clone() }),
        ];
        for (name, params) in cases {
            for seed in [1u32, 42, 9_999] {
                let mut ours = JobSampler::new(&params, seed, n_vocab as i32, &eog);
                let mut reference = params.chain(seed, n_vocab as i32, &eog);
                let mut rng = u64::from(seed);
                let mut repeats = 0;
                let mut seen = std::collections::HashSet::new();
                for step in 0..200 {
                    let row = logits(n_vocab, &mut rng);
                    let all: Vec<LlamaTokenData> =
                        (0..).zip(&row).map(|(id, &l)| LlamaTokenData::new(LlamaToken(id), l, 0.0)).collect();
                    let mut array = LlamaTokenDataArray::new(all, false);
                    array.apply_sampler(&mut reference);
                    let want = array.selected_token().unwrap();
                    reference.accept(want);
                    let got = ours.sample_logits(&row);
                    assert_eq!(got, want, "{name}, seed {seed}, step {step}");
                    if params.ignore_eos {
                        assert!(!eog.contains(&got), "{name}: an end token despite ignore_eos");
                    }
                    repeats += usize::from(!seen.insert(got));
                }
                assert!(repeats > 10, "{name}: the penalty window was exercised ({repeats} repeats)");
            }
        }
    }
}
