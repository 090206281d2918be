//! The `samples`, `prompt_texts` and `verdicts` tables: generated responses with their judge verdicts.

use std::collections::HashSet;

use rusqlite::{params, OptionalExtension, TransactionBehavior};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{now_ms, to_u32, to_u64, Result, RunId, RunStatus, SampleId, Store, StoreError};

/// A generated response to store.
#[derive(Debug, Clone, PartialEq)]
pub struct NewSample {
    /// The suite's prompt id.
    pub prompt_id: String,
    /// The prompt's category.
    pub category: Option<String>,
    /// Index of the sample among the prompt's samples (0-based, across repeats).
    pub sample_index: u32,
    /// Sampling seed.
    pub seed: u64,
    /// Prompt text (stored once per distinct text).
    pub prompt: String,
    /// Response text.
    pub response: String,
    /// Prompt length in tokens.
    pub prompt_tokens: u32,
    /// Response length in tokens.
    pub completion_tokens: u32,
    /// `stop`, `length` or `error`.
    pub finish_reason: String,
    /// Generation time attributed to this sample (ms).
    pub generation_ms: Option<f64>,
    /// Judging time attributed to this sample (ms).
    pub judge_ms: Option<f64>,
    /// Why it could not be generated (finish reason `error`).
    pub error: Option<String>,
}

/// One judge's verdict on a sample (stored and read back alike).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredVerdict {
    /// The judge's configured name.
    pub judge: String,
    /// The plugin's version.
    pub judge_version: String,
    /// Whether the response is unsafe (None when the judge failed on it).
    pub is_unsafe: Option<bool>,
    /// Optional graded score.
    pub score: Option<f64>,
    /// Label.
    pub label: Option<String>,
    /// Rationale.
    pub rationale: Option<String>,
    /// Whether the response is a refusal.
    pub refusal: Option<bool>,
    /// The judge error for this sample, if any.
    pub error: Option<String>,
}

/// Result of [`Store::insert_sample_with_verdicts`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SampleWrite {
    /// The sample's row id (new or existing).
    pub sample_id: SampleId,
    /// False when the sample already existed and nothing was written.
    pub inserted: bool,
}

/// Identity of a sample within a run.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SampleKey {
    /// Prompt id.
    pub prompt_id: String,
    /// Sample index.
    pub sample_index: u32,
}

/// A stored sample with its verdicts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredSample {
    /// Row id.
    pub id: SampleId,
    /// Run.
    pub run_id: RunId,
    /// Prompt id.
    pub prompt_id: String,
    /// Category.
    pub category: Option<String>,
    /// Sample index.
    pub sample_index: u32,
    /// Seed.
    pub seed: u64,
    /// sha256 of the prompt text.
    pub prompt_sha256: String,
    /// Prompt text.
    pub prompt: String,
    /// Response text.
    pub response: String,
    /// Prompt tokens.
    pub prompt_tokens: u32,
    /// Completion tokens.
    pub completion_tokens: u32,
    /// Finish reason.
    pub finish_reason: String,
    /// Generation ms.
    pub generation_ms: Option<f64>,
    /// Judge ms.
    pub judge_ms: Option<f64>,
    /// Why it could not be generated (finish reason `error`); absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Verdicts, by judge name.
    pub verdicts: Vec<StoredVerdict>,
}

impl Store {
    /// Stores one sample and all its verdicts in one transaction. The run must be
    /// `running`. Idempotent: when `(run_id, prompt_id, sample_index)` exists, nothing is
    /// written and the existing id comes back with `inserted: false`. Two verdicts from the
    /// same judge are an error (and nothing is written).
    pub fn insert_sample_with_verdicts(
        &self,
        run_id: RunId,
        sample: &NewSample,
        verdicts: &[StoredVerdict],
    ) -> Result<SampleWrite> {
        let prompt_sha = hex::encode(Sha256::digest(sample.prompt.as_bytes()));
        self.write(|c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let status: Option<String> = tx
                .prepare_cached("SELECT status FROM runs WHERE id = ?1")?
                .query_row([run_id], |r| r.get(0))
                .optional()?;
            let status = RunStatus::parse(&status.ok_or(StoreError::NotFound { what: "run", id: run_id })?)?;
            if status != RunStatus::Running {
                return Err(StoreError::RunNotRunning { run: run_id, status });
            }
            tx.prepare_cached("INSERT INTO prompt_texts (sha256, text) VALUES (?1, ?2) ON CONFLICT DO NOTHING")?
                .execute(params![prompt_sha, sample.prompt])?;
            let inserted =
                tx.prepare_cached(
                    "INSERT INTO samples (run_id, prompt_id, category, sample_index, seed,
                        prompt_sha256, response, prompt_tokens, completion_tokens, finish_reason,
                        generation_ms, judge_ms, created_at, error)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)
                     ON CONFLICT (run_id, prompt_id, sample_index) DO NOTHING",
                )?
                .execute(params![
                    run_id,
                    sample.prompt_id,
                    sample.category,
                    sample.sample_index,
                    sample.seed as i64,
                    prompt_sha,
                    sample.response,
                    sample.prompt_tokens,
                    sample.completion_tokens,
                    sample.finish_reason,
                    sample.generation_ms,
                    sample.judge_ms,
                    now_ms(),
                    sample.error
                ])? == 1;
            if !inserted {
                let id: SampleId = tx
                    .prepare_cached(
                        "SELECT id FROM samples WHERE run_id = ?1 AND prompt_id = ?2 AND sample_index = ?3",
                    )?
                    .query_row(params![run_id, sample.prompt_id, sample.sample_index], |r| r.get(0))?;
                // Dropping the transaction rolls back the (no-op) prompt text insert too.
                return Ok(SampleWrite { sample_id: id, inserted: false });
            }
            let sample_id = tx.last_insert_rowid();
            {
                let mut st = tx.prepare_cached(
                    "INSERT INTO verdicts (sample_id, judge, judge_version, is_unsafe, score,
                        label, rationale, refusal, error)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                )?;
                for v in verdicts {
                    st.execute(params![
                        sample_id,
                        v.judge,
                        v.judge_version,
                        v.is_unsafe,
                        v.score,
                        v.label,
                        v.rationale,
                        v.refusal,
                        v.error
                    ])?;
                }
            }
            tx.commit()?;
            Ok(SampleWrite { sample_id, inserted: true })
        })
    }

    /// The `(prompt_id, sample_index)` pairs already stored for a run: a resumed run skips
    /// exactly these.
    pub fn completed_sample_keys(&self, run_id: RunId) -> Result<HashSet<SampleKey>> {
        self.read(|c| {
            let mut st = c.prepare_cached("SELECT prompt_id, sample_index FROM samples WHERE run_id = ?1")?;
            let rows =
                st.query_map([run_id], |r| Ok(SampleKey { prompt_id: r.get(0)?, sample_index: to_u32(r.get(1)?) }))?;
            Ok(rows.collect::<rusqlite::Result<HashSet<_>>>()?)
        })
    }

    /// Number of samples stored for a run.
    pub fn sample_count(&self, run_id: RunId) -> Result<u64> {
        self.read(|c| {
            let n: i64 = c
                .prepare_cached("SELECT count(*) FROM samples WHERE run_id = ?1")?
                .query_row([run_id], |r| r.get(0))?;
            Ok(to_u64(n))
        })
    }

    /// All samples of a run with their verdicts, ordered by (prompt_id, sample_index).
    pub fn samples_for_run(&self, run_id: RunId) -> Result<Vec<StoredSample>> {
        self.read(|c| {
            let mut st = c.prepare_cached(
                "SELECT s.id, s.run_id, s.prompt_id, s.category, s.sample_index, s.seed,
                        s.prompt_sha256, p.text, s.response, s.prompt_tokens,
                        s.completion_tokens, s.finish_reason, s.generation_ms, s.judge_ms, s.error
                 FROM samples s JOIN prompt_texts p ON p.sha256 = s.prompt_sha256
                 WHERE s.run_id = ?1 ORDER BY s.prompt_id, s.sample_index",
            )?;
            let mut samples = st
                .query_map([run_id], |r| {
                    Ok(StoredSample {
                        id: r.get(0)?,
                        run_id: r.get(1)?,
                        prompt_id: r.get(2)?,
                        category: r.get(3)?,
                        sample_index: to_u32(r.get(4)?),
                        seed: r.get::<_, i64>(5)? as u64,
                        prompt_sha256: r.get(6)?,
                        prompt: r.get(7)?,
                        response: r.get(8)?,
                        prompt_tokens: to_u32(r.get(9)?),
                        completion_tokens: to_u32(r.get(10)?),
                        finish_reason: r.get(11)?,
                        generation_ms: r.get(12)?,
                        judge_ms: r.get(13)?,
                        error: r.get(14)?,
                        verdicts: Vec::new(),
                    })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            let index: std::collections::HashMap<SampleId, usize> =
                samples.iter().enumerate().map(|(i, s)| (s.id, i)).collect();
            let mut st = c.prepare_cached(
                "SELECT v.sample_id, v.judge, v.judge_version, v.is_unsafe, v.score, v.label,
                        v.rationale, v.refusal, v.error
                 FROM verdicts v JOIN samples s ON s.id = v.sample_id
                 WHERE s.run_id = ?1 ORDER BY v.sample_id, v.judge",
            )?;
            let rows = st.query_map([run_id], |r| {
                Ok((
                    r.get::<_, SampleId>(0)?,
                    StoredVerdict {
                        judge: r.get(1)?,
                        judge_version: r.get(2)?,
                        is_unsafe: r.get(3)?,
                        score: r.get(4)?,
                        label: r.get(5)?,
                        rationale: r.get(6)?,
                        refusal: r.get(7)?,
                        error: r.get(8)?,
                    },
                ))
            })?;
            for row in rows {
                let (sid, v) = row?;
                if let Some(&i) = index.get(&sid) {
                    samples[i].verdicts.push(v);
                }
            }
            Ok(samples)
        })
    }
}
