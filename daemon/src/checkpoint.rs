//! Checkpoint sniffing: is a file a whole model or a LoRA adapter, does an adapter fit the base
//! model, and what is its content hash. All of it from driftwatch's own GGUF reader, before
//! llama.cpp sees the file.

use std::path::Path;

use serde::Serialize;

use crate::gguf::{self, GgufError, GgufInfo, GgufKind};

/// Why a file cannot be evaluated.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// The file does not exist.
    #[error("{path}: no such file")]
    Missing {
        /// The path.
        path: String,
    },
    /// The GGUF header is unusable.
    #[error("{path}: {cause}")]
    Gguf {
        /// The path.
        path: String,
        /// What is wrong.
        cause: GgufError,
    },
    /// The file is a GGUF file but neither a model nor a LoRA adapter.
    #[error("{path}: a GGUF file of type '{general_type}', neither a model nor a LoRA adapter")]
    NotACheckpoint {
        /// The path.
        path: String,
        /// Its `general.type`.
        general_type: String,
    },
    /// The file has no `general.architecture`.
    #[error("{path}: the file names no architecture (general.architecture is missing)")]
    NoArchitecture {
        /// The path.
        path: String,
    },
    /// A model was given where an adapter was needed, or the reverse.
    #[error("{path}: expected {expected}, found {found}")]
    WrongKind {
        /// The path.
        path: String,
        /// What was needed.
        expected: &'static str,
        /// What the file is.
        found: &'static str,
    },
    /// The adapter was made for another model.
    #[error("{path}: this adapter does not fit the base model: {reason}")]
    AdapterMismatch {
        /// The adapter's path.
        path: String,
        /// What does not match.
        reason: String,
    },
}

/// A checked checkpoint header.
#[derive(Debug, Clone, Serialize)]
pub struct Checkpoint {
    /// The validated header.
    pub info: GgufInfo,
    /// `general.architecture`.
    pub architecture: String,
}

impl Checkpoint {
    /// True for a LoRA adapter.
    pub fn is_adapter(&self) -> bool {
        matches!(self.info.kind, GgufKind::Adapter(_))
    }

    /// "model" or "adapter".
    pub fn kind_name(&self) -> &'static str {
        if self.is_adapter() {
            "adapter"
        } else {
            "model"
        }
    }
}

/// Reads and checks the header of a checkpoint file (model or adapter).
pub fn inspect(path: &Path) -> Result<Checkpoint, CheckpointError> {
    let p = || path.display().to_string();
    if !path.exists() {
        return Err(CheckpointError::Missing { path: p() });
    }
    let info = gguf::inspect(path).map_err(|cause| CheckpointError::Gguf { path: p(), cause })?;
    if let GgufKind::Other { general_type } = &info.kind {
        return Err(CheckpointError::NotACheckpoint { path: p(), general_type: general_type.clone() });
    }
    let architecture = info.architecture.clone().ok_or_else(|| CheckpointError::NoArchitecture { path: p() })?;
    Ok(Checkpoint { info, architecture })
}

/// Reads a file that must be a whole model.
pub fn inspect_model(path: &Path) -> Result<Checkpoint, CheckpointError> {
    let c = inspect(path)?;
    if c.is_adapter() {
        return Err(CheckpointError::WrongKind {
            path: path.display().to_string(),
            expected: "a whole model",
            found: "a LoRA adapter",
        });
    }
    Ok(c)
}

/// Reads a file that must be a LoRA adapter for `base`, and checks that it fits: same
/// architecture, and every tensor it modifies exists in the base with compatible shapes.
pub fn inspect_adapter_for(path: &Path, base: &Checkpoint) -> Result<Checkpoint, CheckpointError> {
    let c = inspect(path)?;
    let p = || path.display().to_string();
    let GgufKind::Adapter(lora) = &c.info.kind else {
        return Err(CheckpointError::WrongKind { path: p(), expected: "a LoRA adapter", found: "a whole model" });
    };
    check_fits(&c, lora, base).map_err(|reason| CheckpointError::AdapterMismatch { path: p(), reason })?;
    Ok(c)
}

fn check_fits(adapter: &Checkpoint, lora: &gguf::LoraInfo, base: &Checkpoint) -> Result<(), String> {
    if adapter.architecture != base.architecture {
        return Err(format!(
            "the adapter is for architecture '{}', the base model is '{}'",
            adapter.architecture, base.architecture
        ));
    }
    for target in &lora.targets {
        let Some(w) = base.info.tensor(target) else {
            return Err(format!("the base model has no tensor '{target}'"));
        };
        let a = adapter.info.tensor(&format!("{target}.lora_a"));
        let b = adapter.info.tensor(&format!("{target}.lora_b"));
        let (Some(a), Some(b)) = (a, b) else { continue };
        if w.dims.len() < 2 || a.dims[0] != w.dims[0] || b.dims[1] != w.dims[1] {
            return Err(format!(
                "tensor '{target}' is {:?} in the base model but the adapter's A/B pair is {:?} × {:?}",
                w.dims, a.dims, b.dims
            ));
        }
    }
    Ok(())
}

/// The sha256 of a file's content, streamed (never the whole file in memory).
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    crate::watch::hash_file(path)
}
