//! A small GGUF (version 3) writer: metadata and F32 tensors, written to a temporary name and
//! renamed into place so that a half-written file is never seen under its final name.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use super::types::{code, GgmlType};
use super::{DEFAULT_ALIGNMENT, GGUF_MAGIC};

/// A metadata value to write.
#[derive(Debug, Clone)]
enum Value {
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    Str(String),
    ArrStr(Vec<String>),
    ArrF32(Vec<f32>),
    ArrI32(Vec<i32>),
}

/// Tensor contents to write.
#[derive(Debug, Clone)]
pub enum TensorData {
    /// 32-bit floats.
    F32(Vec<f32>),
}

#[derive(Debug, Clone)]
struct Tensor {
    name: String,
    dims: Vec<u64>,
    data: TensorData,
}

/// Builds a GGUF file in memory-light steps and writes it out.
#[derive(Debug, Default, Clone)]
pub struct GgufWriter {
    kv: Vec<(String, Value)>,
    tensors: Vec<Tensor>,
}

impl GgufWriter {
    /// An empty file.
    pub fn new() -> Self {
        Self::default()
    }

    fn push(&mut self, key: &str, v: Value) -> &mut Self {
        self.kv.retain(|(k, _)| k != key);
        self.kv.push((key.to_owned(), v));
        self
    }

    /// Sets a u32 metadata value.
    pub fn u32(&mut self, key: &str, v: u32) -> &mut Self {
        self.push(key, Value::U32(v))
    }
    /// Sets an i32 metadata value.
    pub fn i32(&mut self, key: &str, v: i32) -> &mut Self {
        self.push(key, Value::I32(v))
    }
    /// Sets an f32 metadata value.
    pub fn f32(&mut self, key: &str, v: f32) -> &mut Self {
        self.push(key, Value::F32(v))
    }
    /// Sets a bool metadata value.
    pub fn bool(&mut self, key: &str, v: bool) -> &mut Self {
        self.push(key, Value::Bool(v))
    }
    /// Sets a string metadata value.
    pub fn string(&mut self, key: &str, v: &str) -> &mut Self {
        self.push(key, Value::Str(v.to_owned()))
    }
    /// Sets a string-array metadata value.
    pub fn strings(&mut self, key: &str, v: Vec<String>) -> &mut Self {
        self.push(key, Value::ArrStr(v))
    }
    /// Sets an f32-array metadata value.
    pub fn f32s(&mut self, key: &str, v: Vec<f32>) -> &mut Self {
        self.push(key, Value::ArrF32(v))
    }
    /// Sets an i32-array metadata value.
    pub fn i32s(&mut self, key: &str, v: Vec<i32>) -> &mut Self {
        self.push(key, Value::ArrI32(v))
    }

    /// Adds an F32 tensor with dimensions `dims` (innermost first, as ggml's `ne`).
    ///
    /// # Panics
    /// Never on user input: a length that does not match `dims` is a programming error in the
    /// caller and is reported by [`GgufWriter::write`] instead.
    pub fn tensor_f32(&mut self, name: &str, dims: &[u64], data: Vec<f32>) -> &mut Self {
        self.tensors.push(Tensor { name: name.to_owned(), dims: dims.to_vec(), data: TensorData::F32(data) });
        self
    }

    /// Writes the file to `path` (via a temporary sibling, renamed into place).
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        for t in &self.tensors {
            let n: u64 = t.dims.iter().product();
            let TensorData::F32(d) = &t.data;
            if d.len() as u64 != n {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!("tensor '{}' has {} values for shape {:?}", t.name, d.len(), t.dims),
                ));
            }
        }
        let tmp = path.with_extension("gguf.tmp-write");
        {
            let mut w = BufWriter::new(File::create(&tmp)?);
            self.write_to(&mut w)?;
            w.flush()?;
            w.get_ref().sync_all()?;
        }
        std::fs::rename(&tmp, path)
    }

    /// Writes the whole file to `w`.
    pub fn write_to<W: Write>(&self, w: &mut W) -> std::io::Result<()> {
        let pos = std::cell::Cell::new(0u64);
        let put = |w: &mut W, b: &[u8]| -> std::io::Result<()> {
            pos.set(pos.get() + b.len() as u64);
            w.write_all(b)
        };
        put(w, &GGUF_MAGIC)?;
        put(w, &3u32.to_le_bytes())?;
        put(w, &(self.tensors.len() as u64).to_le_bytes())?;
        put(w, &(self.kv.len() as u64).to_le_bytes())?;
        fn s(b: &mut Vec<u8>, v: &str) {
            b.extend_from_slice(&(v.len() as u64).to_le_bytes());
            b.extend_from_slice(v.as_bytes());
        }
        for (k, v) in &self.kv {
            let mut b = Vec::new();
            s(&mut b, k);
            match v {
                Value::U32(x) => {
                    b.extend_from_slice(&code::U32.to_le_bytes());
                    b.extend_from_slice(&x.to_le_bytes());
                }
                Value::I32(x) => {
                    b.extend_from_slice(&code::I32.to_le_bytes());
                    b.extend_from_slice(&x.to_le_bytes());
                }
                Value::F32(x) => {
                    b.extend_from_slice(&code::F32.to_le_bytes());
                    b.extend_from_slice(&x.to_le_bytes());
                }
                Value::Bool(x) => {
                    b.extend_from_slice(&code::BOOL.to_le_bytes());
                    b.push(u8::from(*x));
                }
                Value::Str(x) => {
                    b.extend_from_slice(&code::STRING.to_le_bytes());
                    s(&mut b, x);
                }
                Value::ArrStr(xs) => {
                    b.extend_from_slice(&code::ARRAY.to_le_bytes());
                    b.extend_from_slice(&code::STRING.to_le_bytes());
                    b.extend_from_slice(&(xs.len() as u64).to_le_bytes());
                    for x in xs {
                        s(&mut b, x);
                    }
                }
                Value::ArrF32(xs) => {
                    b.extend_from_slice(&code::ARRAY.to_le_bytes());
                    b.extend_from_slice(&code::F32.to_le_bytes());
                    b.extend_from_slice(&(xs.len() as u64).to_le_bytes());
                    xs.iter().for_each(|x| b.extend_from_slice(&x.to_le_bytes()));
                }
                Value::ArrI32(xs) => {
                    b.extend_from_slice(&code::ARRAY.to_le_bytes());
                    b.extend_from_slice(&code::I32.to_le_bytes());
                    b.extend_from_slice(&(xs.len() as u64).to_le_bytes());
                    xs.iter().for_each(|x| b.extend_from_slice(&x.to_le_bytes()));
                }
            }
            put(w, &b)?;
        }
        let align = DEFAULT_ALIGNMENT;
        let padded = |n: u64| n.div_ceil(align) * align;
        let mut offset = 0u64;
        for t in &self.tensors {
            let mut b = Vec::new();
            s(&mut b, &t.name);
            b.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
            t.dims.iter().for_each(|d| b.extend_from_slice(&d.to_le_bytes()));
            b.extend_from_slice(&GgmlType::F32.code.to_le_bytes());
            b.extend_from_slice(&offset.to_le_bytes());
            put(w, &b)?;
            let n: u64 = t.dims.iter().product();
            offset += padded(n * 4);
        }
        let header_end = pos.get();
        put(w, &vec![0u8; (padded(header_end) - header_end) as usize])?;
        for t in &self.tensors {
            let TensorData::F32(d) = &t.data;
            let mut b = Vec::with_capacity(d.len() * 4);
            d.iter().for_each(|x| b.extend_from_slice(&x.to_le_bytes()));
            let pad = padded(b.len() as u64) - b.len() as u64;
            b.extend(std::iter::repeat_n(0u8, pad as usize));
            put(w, &b)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::{inspect_reader, GgufError, GgufKind, MetaValue};
    use std::io::Cursor;

    fn sample() -> Vec<u8> {
        let mut w = GgufWriter::new();
        w.string("general.architecture", "llama")
            .string("general.type", "model")
            .u32("llama.block_count", 2)
            .strings("tokenizer.ggml.tokens", (0..100).map(|i| format!("t{i}")).collect())
            .f32s("tokenizer.ggml.scores", vec![0.5; 100])
            .tensor_f32("a.weight", &[8, 2], vec![1.0; 16])
            .tensor_f32("b.weight", &[3], vec![2.0; 3]);
        let mut out = Vec::new();
        w.write_to(&mut out).unwrap();
        out
    }

    #[test]
    fn round_trip() {
        let bytes = sample();
        let info = inspect_reader(Cursor::new(&bytes), bytes.len() as u64).unwrap();
        assert_eq!(info.version, 3);
        assert_eq!(info.kind, GgufKind::Model);
        assert_eq!(info.architecture.as_deref(), Some("llama"));
        assert_eq!(info.get("llama.block_count"), Some(&MetaValue::UInt(2)));
        assert_eq!(info.get("tokenizer.ggml.tokens"), Some(&MetaValue::ArraySummary { element_type: 8, len: 100 }));
        assert_eq!(info.tensors.len(), 2);
        assert_eq!(info.tensors[1].offset, 64);
        assert_eq!(info.tensors[1].size, 12);
        assert_eq!(info.data_offset % 32, 0);
    }

    /// A reader that counts the bytes pulled from it.
    struct Counting<R> {
        inner: R,
        read: std::rc::Rc<std::cell::Cell<u64>>,
    }

    impl<R: std::io::Read> std::io::Read for Counting<R> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = self.inner.read(buf)?;
            self.read.set(self.read.get() + n as u64);
            Ok(n)
        }
    }

    impl<R: std::io::Seek> std::io::Seek for Counting<R> {
        fn seek(&mut self, pos: std::io::SeekFrom) -> std::io::Result<u64> {
            self.inner.seek(pos)
        }
    }

    /// Inspecting a model reads its header about once through `inspect`'s 64 KiB buffer, even
    /// with a tokenizer of many strings (it read the next 64 KiB again for every string it
    /// skipped: 6 GB for the default model's 49k tokens and merges).
    #[test]
    fn inspecting_reads_a_large_vocabulary_once() {
        let n = 20_000;
        let mut w = GgufWriter::new();
        w.string("general.architecture", "llama")
            .string("general.type", "model")
            .strings("tokenizer.ggml.tokens", (0..n).map(|i| format!("token{i}")).collect())
            .strings("tokenizer.ggml.merges", (0..n).map(|i| format!("a{i} b{i}")).collect())
            .tensor_f32("a.weight", &[8, 2], vec![1.0; 16]);
        let mut bytes = Vec::new();
        w.write_to(&mut bytes).unwrap();
        let read = std::rc::Rc::new(std::cell::Cell::new(0));
        let reader =
            std::io::BufReader::with_capacity(1 << 16, Counting { inner: Cursor::new(&bytes), read: read.clone() });
        let info = inspect_reader(reader, bytes.len() as u64).unwrap();
        assert_eq!(info.get("tokenizer.ggml.tokens"), Some(&MetaValue::ArraySummary { element_type: 8, len: n }));
        assert!(read.get() <= bytes.len() as u64, "read {} bytes of a {}-byte file", read.get(), bytes.len());
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        let bytes = sample();
        let info = inspect_reader(Cursor::new(&bytes), bytes.len() as u64).unwrap();
        let end = info.data_offset + info.tensors[1].offset + info.tensors[1].size;
        // Any cut before the last tensor's last byte loses data; only trailing padding may go.
        for cut in 0..end as usize {
            let r = inspect_reader(Cursor::new(&bytes[..cut]), cut as u64);
            assert!(r.is_err(), "a file cut at {cut} of {} bytes was accepted", bytes.len());
        }
        assert!(inspect_reader(Cursor::new(&bytes[..end as usize]), end).is_ok());
        match inspect_reader(Cursor::new(&bytes[..end as usize - 1]), end - 1) {
            Err(GgufError::TensorOutOfBounds { tensor, .. }) => assert_eq!(tensor, "b.weight"),
            other => panic!("expected TensorOutOfBounds, got {other:?}"),
        }
    }

    #[test]
    fn corrupted_bytes_never_panic() {
        // Flip every byte of the header one at a time: each variant is either rejected with an
        // error or parsed; nothing panics or allocates absurdly.
        let bytes = sample();
        let header_end = 400.min(bytes.len());
        for i in 0..header_end {
            for flip in [0xFFu8, 0x80, 0x01] {
                let mut b = bytes.clone();
                b[i] ^= flip;
                let _ = inspect_reader(Cursor::new(&b), b.len() as u64);
            }
        }
    }

    #[test]
    fn not_gguf_and_empty() {
        assert!(matches!(inspect_reader(Cursor::new(b""), 0), Err(GgufError::Empty)));
        let junk = b"PK\x03\x04 this is a zip file";
        match inspect_reader(Cursor::new(junk), junk.len() as u64) {
            Err(GgufError::NotGguf { found }) => assert_eq!(found, "PK.."),
            other => panic!("expected NotGguf, got {other:?}"),
        }
        let mut v1 = sample();
        v1[4] = 1;
        assert!(matches!(inspect_reader(Cursor::new(&v1), v1.len() as u64), Err(GgufError::Version(1))));
    }

    #[test]
    fn adapter_is_classified_with_rank_and_targets() {
        let mut w = GgufWriter::new();
        w.string("general.architecture", "llama")
            .string("general.type", "adapter")
            .string("adapter.type", "lora")
            .f32("adapter.lora.alpha", 8.0)
            .tensor_f32("blk.0.attn_q.weight.lora_a", &[8, 4], vec![0.0; 32])
            .tensor_f32("blk.0.attn_q.weight.lora_b", &[4, 8], vec![0.0; 32]);
        let mut out = Vec::new();
        w.write_to(&mut out).unwrap();
        let info = inspect_reader(Cursor::new(&out), out.len() as u64).unwrap();
        match info.kind {
            GgufKind::Adapter(l) => {
                assert_eq!(l.rank, Some(4));
                assert_eq!(l.alpha, Some(8.0));
                assert_eq!(l.targets, vec!["blk.0.attn_q.weight".to_string()]);
            }
            k => panic!("expected adapter, got {k:?}"),
        }
    }

    #[test]
    fn lonely_lora_tensor_is_rejected() {
        let mut w = GgufWriter::new();
        w.string("general.architecture", "llama")
            .string("general.type", "adapter")
            .string("adapter.type", "lora")
            .tensor_f32("blk.0.attn_q.weight.lora_a", &[8, 4], vec![0.0; 32]);
        let mut out = Vec::new();
        w.write_to(&mut out).unwrap();
        let err = inspect_reader(Cursor::new(&out), out.len() as u64).unwrap_err();
        assert!(err.to_string().contains("no matching"), "{err}");
    }
}
