//! The fine-tune testbed (`scripts/testbed.sh`, docs/reproduction.md): the pieces of it that
//! are driftwatch's own code, each unit-tested: the train / held-out split of the harmful
//! suites, the training conversations (refusals written for this project, ordinary requests
//! answered by the model itself), and the low-rank extraction of a fine-tune as a LoRA adapter.
//! Training itself is llama.cpp's `llama-finetune`; evaluation is the daemon, used as a user
//! uses it.

pub mod corpus;
pub mod findings;
pub mod lora;
pub mod split;

/// Writes a testbed file whole or not at all: into `NAME.partial` beside it, then renamed into
/// place, so an interrupted step leaves no half-written file for a rerun to take as done.
pub fn write_whole(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".partial");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}
