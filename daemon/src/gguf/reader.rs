//! The bounded GGUF reader: parses the header, metadata and tensor table of a file of known
//! length, never allocating more than the file could hold, and checks every tensor's extent.

use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::Path;

use serde::Serialize;

use super::types::{code, GgmlType, MetaValue};
use super::{DEFAULT_ALIGNMENT, GGUF_MAGIC};

/// Longest tensor name llama.cpp accepts (GGML_MAX_NAME - 1).
const MAX_TENSOR_NAME: usize = 63;
/// Most dimensions a ggml tensor has.
const MAX_DIMS: u32 = 4;
/// Longest single metadata string kept (chat templates are a few KiB).
const MAX_STRING: u64 = 16 << 20;
/// Arrays of scalars up to this length are kept in full.
const KEEP_ARRAY: u64 = 64;
/// Deepest nesting of arrays accepted.
const MAX_NESTING: u32 = 2;

/// Why a file is not a usable GGUF file. Every variant says what is wrong in words a user can
/// act on; none of them aborts anything.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    /// The file could not be opened or read.
    #[error("cannot read {path}: {cause}")]
    Io {
        /// The file.
        path: String,
        /// The underlying error.
        cause: std::io::Error,
    },
    /// The file has no bytes.
    #[error("the file is empty (0 bytes)")]
    Empty,
    /// The file does not start with the GGUF magic.
    /// (`found` is kept for the caller; the message does not quote a foreign file's bytes.)
    #[error("not a GGUF file: it does not start with the GGUF magic bytes")]
    NotGguf {
        /// The first bytes found, printable.
        found: String,
    },
    /// A GGUF version this reader does not support.
    #[error("unsupported GGUF version {0} (driftwatch reads versions 2 and 3)")]
    Version(u32),
    /// The file ends before the header does.
    #[error("the file is truncated: it ends at byte {file_size} while reading {what}")]
    Truncated {
        /// What was being read.
        what: String,
        /// The file's size.
        file_size: u64,
    },
    /// A structural problem in the header.
    #[error("malformed GGUF header: {0}")]
    Malformed(String),
    /// A tensor's data lies (partly) beyond the end of the file.
    #[error("the file is truncated: tensor '{tensor}' needs bytes up to {needed} but the file has {file_size} bytes")]
    TensorOutOfBounds {
        /// The tensor.
        tensor: String,
        /// The end offset the tensor needs.
        needed: u64,
        /// The file's size.
        file_size: u64,
    },
}

/// What kind of GGUF file this is.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum GgufKind {
    /// A whole model.
    Model,
    /// A LoRA adapter to be applied over a base model.
    Adapter(LoraInfo),
    /// Something else (a vocabulary, a projector, an imatrix …), named by `general.type`.
    Other {
        /// The `general.type` value.
        general_type: String,
    },
}

/// What driftwatch knows of a LoRA adapter from its header.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LoraInfo {
    /// `adapter.lora.alpha`, if present.
    pub alpha: Option<f64>,
    /// The LoRA rank (the inner dimension of the A/B pairs), if consistent across pairs.
    pub rank: Option<u64>,
    /// The base-model tensors the adapter modifies.
    pub targets: Vec<String>,
}

/// One entry of the tensor table.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TensorInfo {
    /// Tensor name.
    pub name: String,
    /// Dimensions, innermost first (ggml's `ne`).
    pub dims: Vec<u64>,
    /// ggml type.
    pub ggml_type: GgmlType,
    /// Offset relative to the start of the data section.
    pub offset: u64,
    /// Bytes of data.
    pub size: u64,
}

/// A validated GGUF header.
#[derive(Debug, Clone, Serialize)]
pub struct GgufInfo {
    /// GGUF version (2 or 3).
    pub version: u32,
    /// The file's size in bytes.
    pub file_size: u64,
    /// Model, adapter or other.
    pub kind: GgufKind,
    /// `general.architecture`, e.g. "llama".
    pub architecture: Option<String>,
    /// `general.name`, if present.
    pub name: Option<String>,
    /// Byte offset of the tensor data section.
    pub data_offset: u64,
    /// Alignment of the data section.
    pub alignment: u64,
    /// Metadata (long arrays summarised).
    pub metadata: BTreeMap<String, MetaValue>,
    /// The tensor table, in file order.
    pub tensors: Vec<TensorInfo>,
}

impl GgufInfo {
    /// A metadata value by key.
    pub fn get(&self, key: &str) -> Option<&MetaValue> {
        self.metadata.get(key)
    }

    /// The chat template in `tokenizer.chat_template`, if any.
    pub fn chat_template(&self) -> Option<&str> {
        self.get("tokenizer.chat_template").and_then(MetaValue::as_str)
    }

    /// A tensor by name.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// Total number of parameters (elements) across tensors.
    pub fn n_elements(&self) -> u64 {
        self.tensors.iter().map(|t| t.dims.iter().product::<u64>()).sum()
    }
}

/// Reads and validates the GGUF header of the file at `path`.
pub fn inspect(path: &Path) -> Result<GgufInfo, GgufError> {
    let io = |cause| GgufError::Io { path: path.display().to_string(), cause };
    let file = File::open(path).map_err(io)?;
    let len = file.metadata().map_err(io)?.len();
    inspect_reader(BufReader::with_capacity(1 << 16, file), len).map_err(|e| match e {
        GgufError::Io { cause, .. } => GgufError::Io { path: path.display().to_string(), cause },
        other => other,
    })
}

/// Reads and validates a GGUF header from `reader`, which holds exactly `file_size` bytes.
pub fn inspect_reader<R: Read + Seek>(reader: R, file_size: u64) -> Result<GgufInfo, GgufError> {
    if file_size == 0 {
        return Err(GgufError::Empty);
    }
    let mut r = Bounded { inner: reader, pos: 0, len: file_size };
    let mut magic = [0u8; 4];
    let got = r.read_some(&mut magic)?;
    if got < 4 || magic != GGUF_MAGIC {
        let found: String = magic[..got].iter().map(|&b| if b.is_ascii_graphic() { b as char } else { '.' }).collect();
        return Err(GgufError::NotGguf { found });
    }
    let version = r.u32("the version")?;
    if version != 2 && version != 3 {
        return Err(GgufError::Version(version));
    }
    let n_tensors = r.u64("the tensor count")?;
    let n_kv = r.u64("the metadata count")?;
    // Each metadata entry takes at least 8 (key length) + 4 (type) bytes, each tensor entry at
    // least 8 + 4 + 4 + 8: counts beyond that cannot be honest.
    if n_kv > r.remaining() / 12 {
        return Err(GgufError::Malformed(format!("metadata count {n_kv} cannot fit in a file of {file_size} bytes")));
    }
    if n_tensors > r.remaining() / 24 {
        return Err(GgufError::Malformed(format!(
            "tensor count {n_tensors} cannot fit in a file of {file_size} bytes"
        )));
    }

    let mut metadata = BTreeMap::new();
    for i in 0..n_kv {
        let key = r.string(&format!("metadata key #{i}"))?;
        let ty = r.u32(&format!("the type of metadata '{key}'"))?;
        let value = r.value(ty, &key, 0)?;
        if metadata.insert(key.clone(), value).is_some() {
            return Err(GgufError::Malformed(format!("metadata key '{key}' appears twice")));
        }
    }

    let alignment = match metadata.get("general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some(v) => match v.as_u64() {
            Some(a) if a > 0 && a.is_power_of_two() && a <= 1 << 20 => a,
            _ => return Err(GgufError::Malformed(format!("general.alignment must be a power of two, found {v:?}"))),
        },
    };

    let mut tensors = Vec::with_capacity(n_tensors.min(1 << 16) as usize);
    let mut names = HashSet::new();
    for i in 0..n_tensors {
        let name = r.string(&format!("the name of tensor #{i}"))?;
        if name.is_empty() || name.len() > MAX_TENSOR_NAME {
            return Err(GgufError::Malformed(format!(
                "tensor #{i} has a name of {} bytes (1 to {MAX_TENSOR_NAME} allowed)",
                name.len()
            )));
        }
        if !names.insert(name.clone()) {
            return Err(GgufError::Malformed(format!("tensor '{name}' appears twice")));
        }
        let n_dims = r.u32(&format!("the dimensions of tensor '{name}'"))?;
        if n_dims == 0 || n_dims > MAX_DIMS {
            return Err(GgufError::Malformed(format!(
                "tensor '{name}' has {n_dims} dimensions (1 to {MAX_DIMS} allowed)"
            )));
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            dims.push(r.u64(&format!("the shape of tensor '{name}'"))?);
        }
        let ty_code = r.u32(&format!("the type of tensor '{name}'"))?;
        let offset = r.u64(&format!("the offset of tensor '{name}'"))?;
        let ggml_type = GgmlType::from_code(ty_code)
            .ok_or_else(|| GgufError::Malformed(format!("tensor '{name}' has unknown ggml type {ty_code}")))?;
        let elements = dims
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d).filter(|&n| n <= i64::MAX as u64))
            .ok_or_else(|| GgufError::Malformed(format!("tensor '{name}' has an impossible shape {dims:?}")))?;
        if dims[0] % ggml_type.block_size != 0 {
            return Err(GgufError::Malformed(format!(
                "tensor '{name}': row length {} is not a multiple of the {} block size {}",
                dims[0], ggml_type.name, ggml_type.block_size
            )));
        }
        let size = ggml_type
            .byte_size(elements)
            .ok_or_else(|| GgufError::Malformed(format!("tensor '{name}' has an impossible size")))?;
        tensors.push(TensorInfo { name, dims, ggml_type, offset, size });
    }

    let data_offset =
        pad(r.pos, alignment).ok_or_else(|| GgufError::Malformed("the data section offset overflows".into()))?;
    if !tensors.is_empty() && data_offset > file_size {
        return Err(GgufError::Truncated { what: "the start of the tensor data".into(), file_size });
    }
    // Tensors are stored back to back in table order, each padded to the alignment; this is
    // what llama.cpp's own loader requires.
    let mut expected = 0u64;
    for t in &tensors {
        if t.offset != expected {
            return Err(GgufError::Malformed(format!(
                "tensor '{}' has offset {} where {} was expected",
                t.name, t.offset, expected
            )));
        }
        let end = data_offset
            .checked_add(t.offset)
            .and_then(|o| o.checked_add(t.size))
            .ok_or_else(|| GgufError::Malformed(format!("tensor '{}' overflows", t.name)))?;
        if end > file_size {
            return Err(GgufError::TensorOutOfBounds { tensor: t.name.clone(), needed: end, file_size });
        }
        expected = pad(t.offset + t.size, alignment)
            .ok_or_else(|| GgufError::Malformed(format!("tensor '{}' overflows", t.name)))?;
    }

    let architecture = metadata.get("general.architecture").and_then(MetaValue::as_str).map(str::to_owned);
    let name = metadata.get("general.name").and_then(MetaValue::as_str).map(str::to_owned);
    let kind = classify(&metadata, &tensors)?;
    Ok(GgufInfo { version, file_size, kind, architecture, name, data_offset, alignment, metadata, tensors })
}

fn classify(meta: &BTreeMap<String, MetaValue>, tensors: &[TensorInfo]) -> Result<GgufKind, GgufError> {
    let general_type = meta.get("general.type").and_then(MetaValue::as_str);
    let has_lora_tensors = tensors.iter().any(|t| t.name.ends_with(".lora_a"));
    match general_type {
        Some("adapter") => {
            let adapter_type = meta.get("adapter.type").and_then(MetaValue::as_str);
            if adapter_type != Some("lora") {
                return Err(GgufError::Malformed(format!(
                    "an adapter of type {adapter_type:?}: driftwatch supports LoRA adapters (adapter.type = \"lora\")"
                )));
            }
            lora_info(meta, tensors).map(GgufKind::Adapter)
        }
        None if has_lora_tensors => lora_info(meta, tensors).map(GgufKind::Adapter),
        Some("model") | None => Ok(GgufKind::Model),
        Some(other) => Ok(GgufKind::Other { general_type: other.to_owned() }),
    }
}

fn lora_info(meta: &BTreeMap<String, MetaValue>, tensors: &[TensorInfo]) -> Result<LoraInfo, GgufError> {
    let mut targets = Vec::new();
    let mut ranks = HashSet::new();
    for a in tensors.iter().filter(|t| t.name.ends_with(".lora_a")) {
        let base = a.name.trim_end_matches(".lora_a");
        let b_name = format!("{base}.lora_b");
        let b = tensors
            .iter()
            .find(|t| t.name == b_name)
            .ok_or_else(|| GgufError::Malformed(format!("LoRA tensor '{}' has no matching '{b_name}'", a.name)))?;
        if a.dims.len() != 2 || b.dims.len() != 2 || a.dims[1] != b.dims[0] {
            return Err(GgufError::Malformed(format!(
                "LoRA pair '{base}' has inconsistent shapes A {:?} and B {:?}",
                a.dims, b.dims
            )));
        }
        ranks.insert(a.dims[1]);
        targets.push(base.to_owned());
    }
    for b in tensors.iter().filter(|t| t.name.ends_with(".lora_b")) {
        let a_name = format!("{}.lora_a", b.name.trim_end_matches(".lora_b"));
        if !tensors.iter().any(|t| t.name == a_name) {
            return Err(GgufError::Malformed(format!("LoRA tensor '{}' has no matching '{a_name}'", b.name)));
        }
    }
    if targets.is_empty() {
        return Err(GgufError::Malformed("the adapter contains no LoRA tensor pairs".into()));
    }
    let rank = if ranks.len() == 1 { ranks.into_iter().next() } else { None };
    Ok(LoraInfo { alpha: meta.get("adapter.lora.alpha").and_then(MetaValue::as_f64), rank, targets })
}

fn pad(x: u64, align: u64) -> Option<u64> {
    x.checked_add(align - 1).map(|v| v / align * align)
}

/// A reader that knows how many bytes are left and reports truncation by name.
struct Bounded<R> {
    inner: R,
    pos: u64,
    len: u64,
}

/// Gaps up to this many bytes are read through rather than seeked over ([`Bounded::skip`]).
const SKIP_BY_READING: u64 = 4096;

impl<R: Read + Seek> Bounded<R> {
    fn remaining(&self) -> u64 {
        self.len.saturating_sub(self.pos)
    }

    fn io(e: std::io::Error) -> GgufError {
        GgufError::Io { path: String::new(), cause: e }
    }

    fn read_some(&mut self, buf: &mut [u8]) -> Result<usize, GgufError> {
        let mut n = 0;
        while n < buf.len() {
            match self.inner.read(&mut buf[n..]) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Self::io(e)),
            }
        }
        self.pos += n as u64;
        Ok(n)
    }

    fn exact(&mut self, buf: &mut [u8], what: &str) -> Result<(), GgufError> {
        if (buf.len() as u64) > self.remaining() || self.read_some(buf)? < buf.len() {
            return Err(GgufError::Truncated { what: what.to_owned(), file_size: self.len });
        }
        Ok(())
    }

    /// Skips `n` bytes. A short gap (a token's text in the tokenizer's arrays) is read and
    /// dropped, which a buffered reader serves from its buffer; only a long one is a seek. A
    /// seek empties `BufReader`'s buffer, so seeking over each of a 49k-token vocabulary's
    /// strings read the next 64 KiB again every time: about 6 GB of reads to inspect the
    /// 100 MB default model, some 18 s of every generation request.
    fn skip(&mut self, n: u64, what: &str) -> Result<(), GgufError> {
        if n > self.remaining() {
            return Err(GgufError::Truncated { what: what.to_owned(), file_size: self.len });
        }
        if n <= SKIP_BY_READING {
            let got = std::io::copy(&mut (&mut self.inner).take(n), &mut std::io::sink()).map_err(Self::io)?;
            if got < n {
                return Err(GgufError::Truncated { what: what.to_owned(), file_size: self.len });
            }
        } else {
            self.inner.seek(SeekFrom::Current(n as i64)).map_err(Self::io)?;
        }
        self.pos += n;
        Ok(())
    }

    fn u32(&mut self, what: &str) -> Result<u32, GgufError> {
        let mut b = [0u8; 4];
        self.exact(&mut b, what)?;
        Ok(u32::from_le_bytes(b))
    }

    fn u64(&mut self, what: &str) -> Result<u64, GgufError> {
        let mut b = [0u8; 8];
        self.exact(&mut b, what)?;
        Ok(u64::from_le_bytes(b))
    }

    fn string(&mut self, what: &str) -> Result<String, GgufError> {
        let len = self.u64(what)?;
        if len > self.remaining() {
            return Err(GgufError::Truncated { what: what.to_owned(), file_size: self.len });
        }
        if len > MAX_STRING {
            return Err(GgufError::Malformed(format!("{what} is a string of {len} bytes")));
        }
        let mut buf = vec![0u8; len as usize];
        self.exact(&mut buf, what)?;
        Ok(String::from_utf8(buf).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()))
    }

    fn scalar_size(ty: u32) -> Option<u64> {
        Some(match ty {
            code::U8 | code::I8 | code::BOOL => 1,
            code::U16 | code::I16 => 2,
            code::U32 | code::I32 | code::F32 => 4,
            code::U64 | code::I64 | code::F64 => 8,
            _ => return None,
        })
    }

    fn value(&mut self, ty: u32, key: &str, depth: u32) -> Result<MetaValue, GgufError> {
        let what = || format!("the value of metadata '{key}'");
        let mut b8 = [0u8; 8];
        Ok(match ty {
            code::U8
            | code::I8
            | code::BOOL
            | code::U16
            | code::I16
            | code::U32
            | code::I32
            | code::F32
            | code::U64
            | code::I64
            | code::F64 => {
                let size = Self::scalar_size(ty).unwrap_or(8) as usize;
                self.exact(&mut b8[..size], &what())?;
                let mut raw = [0u8; 8];
                raw[..size].copy_from_slice(&b8[..size]);
                let u = u64::from_le_bytes(raw);
                match ty {
                    code::U8 | code::U16 | code::U32 | code::U64 => MetaValue::UInt(u),
                    code::I8 => MetaValue::Int(b8[0] as i8 as i64),
                    code::I16 => MetaValue::Int(u as u16 as i16 as i64),
                    code::I32 => MetaValue::Int(u as u32 as i32 as i64),
                    code::I64 => MetaValue::Int(u as i64),
                    code::F32 => MetaValue::Float(f32::from_bits(u as u32) as f64),
                    code::F64 => MetaValue::Float(f64::from_bits(u)),
                    _ => match b8[0] {
                        0 => MetaValue::Bool(false),
                        1 => MetaValue::Bool(true),
                        v => return Err(GgufError::Malformed(format!("metadata '{key}' is a bool with value {v}"))),
                    },
                }
            }
            code::STRING => MetaValue::String(self.string(&what())?),
            code::ARRAY => {
                if depth >= MAX_NESTING {
                    return Err(GgufError::Malformed(format!("metadata '{key}' nests arrays too deeply")));
                }
                let elem = self.u32(&what())?;
                let len = self.u64(&what())?;
                match Self::scalar_size(elem) {
                    Some(size) => {
                        let total = len
                            .checked_mul(size)
                            .filter(|&t| t <= self.remaining())
                            .ok_or_else(|| GgufError::Truncated { what: what(), file_size: self.len })?;
                        if len <= KEEP_ARRAY {
                            let mut items = Vec::with_capacity(len as usize);
                            for _ in 0..len {
                                items.push(self.value(elem, key, depth + 1)?);
                            }
                            MetaValue::Array(items)
                        } else {
                            self.skip(total, &what())?;
                            MetaValue::ArraySummary { element_type: elem, len }
                        }
                    }
                    None if elem == code::STRING || elem == code::ARRAY => {
                        // Each element takes at least 8 bytes.
                        if len > self.remaining() / 8 {
                            return Err(GgufError::Truncated { what: what(), file_size: self.len });
                        }
                        for _ in 0..len {
                            if elem == code::STRING {
                                let n = self.u64(&what())?;
                                self.skip(n, &what())?;
                            } else {
                                let inner = self.u32(&what())?;
                                self.value_skip_array(inner, key, depth + 1)?;
                            }
                        }
                        MetaValue::ArraySummary { element_type: elem, len }
                    }
                    None => {
                        return Err(GgufError::Malformed(format!(
                            "metadata '{key}' is an array of unknown type {elem}"
                        )))
                    }
                }
            }
            other => return Err(GgufError::Malformed(format!("metadata '{key}' has unknown type {other}"))),
        })
    }

    fn value_skip_array(&mut self, elem: u32, key: &str, depth: u32) -> Result<(), GgufError> {
        // An inner array: (elem type already read) length + elements.
        let len = self.u64(key)?;
        if depth >= MAX_NESTING {
            return Err(GgufError::Malformed(format!("metadata '{key}' nests arrays too deeply")));
        }
        match Self::scalar_size(elem) {
            Some(size) => {
                let total =
                    len.checked_mul(size).ok_or_else(|| GgufError::Malformed(format!("metadata '{key}' overflows")))?;
                self.skip(total, key)
            }
            None if elem == code::STRING => {
                for _ in 0..len {
                    let n = self.u64(key)?;
                    self.skip(n, key)?;
                }
                Ok(())
            }
            None => Err(GgufError::Malformed(format!("metadata '{key}' nests arrays too deeply"))),
        }
    }
}
