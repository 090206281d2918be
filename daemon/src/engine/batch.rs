//! The continuous batching decoder: up to `parallel` sequences decode together in one llama.cpp
//! context; a finished sequence's slot is refilled with the next job at once; and the samples
//! of one prompt share its prefill.
//!
//! Prefix sharing: a prompt's tokens except the last are prefilled once into a *holder*
//! sequence (ids `parallel..`). Each of its samples then gets the holder's KV cells by
//! `seq_cp` and decodes only the prompt's last token itself, inside the ordinary generation
//! batch, so that its first token is sampled from its own logits. This works whether a
//! prompt's samples start together or one by one as slots free up. The holder is released
//! when the prompt's last sample starts. With one KV stream per sequence (the default),
//! `seq_cp` copies the holder's whole stream (about 6 MB for the default model at 256 tokens
//! a sequence); in a unified KV cache it only shares the cells.
//!
//! Batch invariance (a sample's text does not depend on which other jobs share its batches):
//! every sequence has its own KV stream, each prompt's prefix is prefilled alone, in chunks
//! that depend only on its length and `batch_size`, and, where llama.cpp's llamafile kernels
//! are compiled in, no matrix product ever has one column. Those kernels take every product of
//! two or more columns, accumulating each element in an order that does not depend on how many
//! columns there are, but leave a single column to ggml's own dot products, which accumulate
//! in another order. A generation step with one sequence therefore carries a second, padding
//! sequence ([`PAD_SEQ`]) whose logits are computed and thrown away.
//!
//! Sequence ids: `0..parallel` are the slots, [`PAD_SEQ`] (1) is the padding sequence (a free
//! slot whenever only slot 0 runs, or the spare id `parallel` when `parallel` is 1), and
//! `parallel + 1 ..= 2 × parallel + 1` hold prompts being shared; [`n_seq`] counts them.

use std::collections::{BTreeSet, VecDeque};
use std::time::Instant;

use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::token::LlamaToken;
use tokio::sync::mpsc::UnboundedSender;
use tokio_util::sync::CancellationToken;

use super::sampling::JobSampler;
use super::{
    EngineError, EngineEvent, FinishReason, GenerationStats, Job, Progress, SampleOutput, SamplingParams,
    PROGRESS_EVERY,
};

/// A distinct prompt: its tokens, or why it cannot run.
pub(crate) struct TokenizedPrompt {
    pub tokens: Vec<LlamaToken>,
    pub error: Option<String>,
}

/// Everything one run of the decoder needs.
pub(crate) struct Work<'a> {
    pub prompts: &'a [TokenizedPrompt],
    pub jobs: &'a [Job],
    /// For each job, the index of its prompt.
    pub job_prompt: &'a [usize],
    pub sampling: &'a SamplingParams,
    pub parallel: usize,
    pub batch_size: usize,
    /// Whether a one-sequence generation step carries [`PAD_SEQ`] (see the module comment):
    /// where llama.cpp's llamafile kernels take products of two or more columns.
    pub pad_single: bool,
}

/// The padding sequence of a one-sequence generation step: consecutive with slot 0, so that
/// llama.cpp keeps the two in one micro-batch (with one KV stream per sequence it only batches
/// consecutive sequence ids together).
pub(crate) const PAD_SEQ: i32 = 1;

/// The sequence ids a context needs for `parallel` slots: the slots, one spare (the padding
/// sequence when `parallel` is 1), and `parallel + 1` holders.
pub(crate) fn n_seq(parallel: usize) -> usize {
    2 * parallel + 2
}

struct Slot {
    job: usize,
    sampler: JobSampler,
    pos: i32,
    next: LlamaToken,
    n_gen: u32,
    out: Vec<u8>,
    started: Instant,
    batch_idx: i32,
}

#[derive(Default, Clone)]
struct PromptState {
    holder: Option<i32>,
    unadmitted: usize,
}

fn llama_err(what: &str, e: impl std::fmt::Display) -> EngineError {
    EngineError::Llama(format!("{what}: {e}"))
}

/// The most tokens of one prompt prefilled in one decode call: `batch_size`, and at least 3 so
/// that [`chunk_end`] can always leave two. llama.cpp's `n_batch` and `n_ubatch` are at least
/// this, and at least 2 for a padded step.
pub(crate) fn prefill_chunk(batch_size: usize) -> usize {
    batch_size.max(3)
}

/// Where the prefill chunk of a prefix of `len` tokens that starts at `start` ends: `chunk`
/// tokens on, or the prefix's end, but never one token short of it, so that no chunk but a
/// one-token prefix has a single column (every product then takes the same kernels, whatever
/// the chunk boundaries, and a prompt's KV cells do not depend on `batch_size`).
fn chunk_end(start: usize, len: usize, chunk: usize) -> usize {
    let end = (start + chunk).min(len);
    if len - end == 1 {
        end - 1
    } else {
        end
    }
}

/// Runs every job; streams a [`SampleOutput`] per finished job.
pub(crate) fn run(
    model: &LlamaModel,
    ctx: &mut LlamaContext<'_>,
    work: Work<'_>,
    events: &UnboundedSender<EngineEvent>,
    cancel: &CancellationToken,
) -> Result<GenerationStats, EngineError> {
    let vocab = model.vocab();
    let n_vocab = model.n_vocab();
    // End-of-generation tokens, for `ignore_eos`.
    let eog: Vec<LlamaToken> = vocab.tokens().filter(|&t| vocab.is_eog(t)).collect();
    let p = work.parallel;
    let started = Instant::now();
    let mut stats = GenerationStats::default();
    let mut states = vec![PromptState::default(); work.prompts.len()];
    let mut queue = VecDeque::new();
    let mut done = 0usize;
    let total = work.jobs.len();

    let emit = |s: SampleOutput| {
        // A receiver that went away has cancelled; the token tells the loop.
        let _ = events.send(EngineEvent::Sample(s));
    };

    for (j, job) in work.jobs.iter().enumerate() {
        let prompt = &work.prompts[work.job_prompt[j]];
        if let Some(err) = &prompt.error {
            emit(SampleOutput {
                job_index: j,
                prompt_id: job.prompt_id.clone(),
                sample_index: job.sample_index,
                seed: job.seed,
                text: String::new(),
                prompt_tokens: prompt.tokens.len() as u32,
                completion_tokens: 0,
                finish_reason: FinishReason::Error,
                error: Some(err.clone()),
                generation_ms: 0,
            });
            done += 1;
            continue;
        }
        states[work.job_prompt[j]].unadmitted += 1;
        stats.prompt_tokens_total += prompt.tokens.len() as u64;
        queue.push_back(j);
    }

    let mut slots: Vec<Option<Slot>> = (0..p).map(|_| None).collect();
    // Holder sequence ids: at most `parallel` prompts start in one step, plus one prompt whose
    // samples are still being admitted.
    let mut free_holders: BTreeSet<i32> = (p as i32 + 1..n_seq(p) as i32).collect();
    let mut batch = LlamaBatch::new(prefill_chunk(work.batch_size).max(p), 1);
    let mut last_progress = Instant::now();
    let max_stop = work.sampling.stop.iter().map(String::len).max().unwrap_or(0);

    loop {
        if cancel.is_cancelled() {
            for (i, slot) in slots.iter_mut().enumerate() {
                if let Some(s) = slot.take() {
                    emit(finish(s, work.jobs, work.prompts, work.job_prompt, FinishReason::Cancelled));
                    ctx.clear_kv_cache_seq(Some(i as u32), None, None).map_err(|e| llama_err("kv", e))?;
                }
            }
            break;
        }

        // 1. Plan admissions: free slots take the next jobs in order.
        let mut planned = Vec::new();
        let mut to_prefill = Vec::new();
        for slot in (0..p).filter(|&i| slots[i].is_none()) {
            let Some(&j) = queue.front() else { break };
            let g = work.job_prompt[j];
            if work.prompts[g].tokens.len() > 1 && states[g].holder.is_none() {
                // The lowest free holder, so that prompts prefilled together have consecutive
                // ids and share micro-batches.
                let Some(h) = free_holders.pop_first() else { break };
                states[g].holder = Some(h);
                to_prefill.push(g);
            }
            queue.pop_front();
            planned.push((slot, j));
        }

        // 2. Prefill each new prompt's prefix into its holder, alone and in chunks of
        // `batch_size`, so that how its KV cells are computed depends on the prompt alone (not
        // on the prompts prefilled with it: llama.cpp would cut sequences of unequal lengths
        // into micro-batches by the shortest, and both its matrix products and its attention
        // take other kernels for other shapes).
        if !to_prefill.is_empty() {
            let t = Instant::now();
            for &g in &to_prefill {
                let h = states[g].holder.unwrap_or_default();
                let toks = &work.prompts[g].tokens;
                let prefix = &toks[..toks.len() - 1];
                let mut start = 0;
                while start < prefix.len() {
                    let end = chunk_end(start, prefix.len(), prefill_chunk(work.batch_size));
                    batch.clear();
                    for (pos, &tok) in (start..end).zip(&prefix[start..end]) {
                        batch.add(tok, pos as i32, &[h], false).map_err(|e| llama_err("batch", e))?;
                    }
                    ctx.decode(&mut batch).map_err(|e| llama_err("prefill", e))?;
                    stats.prefill_tokens += (end - start) as u64;
                    start = end;
                }
            }
            stats.prefill_s += t.elapsed().as_secs_f64();
        }

        // 3. Admit: share the prefix, then decode the prompt's last token in the slot itself.
        for (slot, j) in planned {
            let g = work.job_prompt[j];
            let toks = &work.prompts[g].tokens;
            if let Some(h) = states[g].holder {
                ctx.copy_kv_cache_seq(h, slot as i32, None, None).map_err(|e| llama_err("kv copy", e))?;
            }
            states[g].unadmitted -= 1;
            if states[g].unadmitted == 0 {
                if let Some(h) = states[g].holder.take() {
                    ctx.clear_kv_cache_seq(Some(h as u32), None, None).map_err(|e| llama_err("kv", e))?;
                    free_holders.insert(h);
                }
            }
            stats.prefill_tokens += 1;
            slots[slot] = Some(Slot {
                job: j,
                sampler: JobSampler::new(work.sampling, work.jobs[j].seed, n_vocab, &eog),
                pos: toks.len() as i32 - 1,
                next: toks[toks.len() - 1],
                n_gen: 0,
                out: Vec::new(),
                started: Instant::now(),
                batch_idx: -1,
            });
        }

        // 4. Close the gaps finished sequences leave (when nothing is left to admit, or a
        // prompt waits for a holder): llama.cpp puts only sequences with consecutive ids in
        // one micro-batch when each has its own KV stream, so slots {0, 1, 3} would cost two
        // forward passes per step instead of one, and slot 3's would have one column.
        stats.moved += compact(&mut slots, ctx)?;

        // 5. One generation step for every active sequence (slots `0..n` now).
        batch.clear();
        for (i, slot) in slots.iter_mut().enumerate() {
            if let Some(s) = slot {
                s.batch_idx = batch.n_tokens();
                batch.add(s.next, s.pos, &[i as i32], true).map_err(|e| llama_err("batch", e))?;
            }
        }
        if batch.n_tokens() == 0 {
            if queue.is_empty() {
                break;
            }
            return Err(EngineError::Llama("the scheduler stalled with jobs left (no free holder)".into()));
        }
        // One sequence: a second one keeps every product at two columns (module comment). Its
        // token and logits are thrown away, and its KV cell is cleared after the step.
        let padded = work.pad_single && batch.n_tokens() == 1;
        if padded {
            let next = slots[0].as_ref().map(|s| s.next).expect("the one active sequence is in slot 0");
            batch.add(next, 0, &[PAD_SEQ], true).map_err(|e| llama_err("batch", e))?;
        }
        let t = Instant::now();
        ctx.decode(&mut batch).map_err(|e| llama_err("decode", e))?;
        // On a GPU the decode call returns before the work is done; the logits wait for it.
        ctx.synchronize();
        stats.decode_calls += 1;
        stats.decode_s += t.elapsed().as_secs_f64();
        if padded {
            stats.padded_steps += 1;
            ctx.clear_kv_cache_seq(Some(PAD_SEQ as u32), None, None).map_err(|e| llama_err("kv", e))?;
        }
        let t = Instant::now();

        // 6. Sample, append, and retire finished sequences.
        for (i, slot) in slots.iter_mut().enumerate().take(p) {
            let Some(s) = slot.as_mut() else { continue };
            let tok = s.sampler.sample(ctx, s.batch_idx);
            let reason = if vocab.is_eog(tok) {
                Some(FinishReason::Stop)
            } else {
                let before = s.out.len();
                s.out.extend_from_slice(&vocab.token_to_piece(tok, false, None));
                s.n_gen += 1;
                stats.generated_tokens += 1;
                if let Some(at) = find_stop(&s.out, before, max_stop, &work.sampling.stop) {
                    s.out.truncate(at);
                    Some(FinishReason::Stop)
                } else if s.n_gen >= work.sampling.max_tokens {
                    Some(FinishReason::Length)
                } else {
                    s.next = tok;
                    s.pos += 1;
                    None
                }
            };
            if let Some(reason) = reason {
                let s = slot.take().expect("slot is active");
                emit(finish(s, work.jobs, work.prompts, work.job_prompt, reason));
                done += 1;
                ctx.clear_kv_cache_seq(Some(i as u32), None, None).map_err(|e| llama_err("kv", e))?;
            }
        }
        stats.sample_s += t.elapsed().as_secs_f64();

        if last_progress.elapsed() >= PROGRESS_EVERY {
            last_progress = Instant::now();
            let _ = events.send(EngineEvent::Progress(Progress {
                done,
                total,
                generated_tokens: stats.generated_tokens,
                elapsed_s: started.elapsed().as_secs_f64(),
            }));
        }
    }
    stats.sequences = done;
    stats.wall_s = started.elapsed().as_secs_f64();
    Ok(stats)
}

/// Moves the highest active slots into the lowest free ones until the active slots are
/// `0..n`, each sequence's KV cells with it. Returns how many moved.
fn compact(slots: &mut [Option<Slot>], ctx: &mut LlamaContext<'_>) -> Result<u64, EngineError> {
    let mut moved = 0;
    while let Some(free) = slots.iter().position(Option::is_none) {
        let Some(last) = slots.iter().rposition(Option::is_some) else { break };
        if last < free {
            break;
        }
        ctx.copy_kv_cache_seq(last as i32, free as i32, None, None).map_err(|e| llama_err("kv copy", e))?;
        ctx.clear_kv_cache_seq(Some(last as u32), None, None).map_err(|e| llama_err("kv", e))?;
        slots.swap(free, last);
        moved += 1;
    }
    Ok(moved)
}

fn finish(
    s: Slot,
    jobs: &[Job],
    prompts: &[TokenizedPrompt],
    job_prompt: &[usize],
    reason: FinishReason,
) -> SampleOutput {
    let job = &jobs[s.job];
    SampleOutput {
        job_index: s.job,
        prompt_id: job.prompt_id.clone(),
        sample_index: job.sample_index,
        seed: job.seed,
        text: String::from_utf8_lossy(&s.out).into_owned(),
        prompt_tokens: prompts[job_prompt[s.job]].tokens.len() as u32,
        completion_tokens: s.n_gen,
        finish_reason: reason,
        error: None,
        generation_ms: s.started.elapsed().as_millis() as u64,
    }
}

/// The byte offset of the first stop string that ends in the bytes appended since `before`.
fn find_stop(out: &[u8], before: usize, max_stop: usize, stops: &[String]) -> Option<usize> {
    if stops.is_empty() {
        return None;
    }
    let from = before.saturating_sub(max_stop.saturating_sub(1));
    stops
        .iter()
        .filter_map(|stop| {
            let stop = stop.as_bytes();
            out[from..].windows(stop.len()).position(|w| w == stop).map(|i| from + i)
        })
        .min()
}

#[cfg(test)]
mod tests {
    use super::{chunk_end, find_stop, prefill_chunk};

    #[test]
    fn prefill_chunks_cover_the_prefix_and_none_but_a_one_token_prefix_has_one_token() {
        for batch_size in [1, 2, 3, 4, 7, 512] {
            let chunk = prefill_chunk(batch_size);
            for len in 1..40 {
                let (mut start, mut sizes) = (0, Vec::new());
                while start < len {
                    let end = chunk_end(start, len, chunk);
                    assert!(end > start && end - start <= chunk, "batch_size {batch_size}, len {len}: {start}..{end}");
                    sizes.push(end - start);
                    start = end;
                }
                assert_eq!(sizes.iter().sum::<usize>(), len);
                assert!(len == 1 || sizes.iter().all(|&n| n >= 2), "batch_size {batch_size}, len {len}: {sizes:?}");
            }
        }
    }

    #[test]
    fn stop_strings_are_found_across_token_boundaries() {
        let stops = vec!["\nUser:".to_string(), "###".to_string()];
        let out = b"Sure, here it is.\nUs".to_vec();
        assert_eq!(find_stop(&out, 10, 6, &stops), None);
        let mut out2 = out.clone();
        let before = out2.len();
        out2.extend_from_slice(b"er: hi");
        assert_eq!(find_stop(&out2, before, 6, &stops), Some(17));
        assert_eq!(find_stop(b"a ### b", 0, 6, &stops), Some(2));
        assert_eq!(find_stop(b"abc", 0, 0, &[]), None);
    }
}
