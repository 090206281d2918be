//! GGUF files, read and written by driftwatch itself: a bounded header reader that validates a
//! file before llama.cpp ever sees it, and a small writer used for test fixtures and synthetic
//! LoRA adapters.
//!
//! llama.cpp aborts the whole process on some malformed inputs; driftwatch must not. Every
//! checkpoint is therefore read here first: magic, version, metadata, the tensor table, and
//! every tensor's extent within the file. Only files that pass go on to llama.cpp.

mod reader;
mod types;
mod writer;

pub use reader::{inspect, inspect_reader, GgufError, GgufInfo, GgufKind, LoraInfo, TensorInfo};
pub use types::{GgmlType, MetaValue};
pub use writer::{GgufWriter, TensorData};

/// The four bytes every GGUF file starts with.
pub const GGUF_MAGIC: [u8; 4] = *b"GGUF";
/// The default alignment of the tensor data section when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
