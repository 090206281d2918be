//! A full fine-tune as a LoRA adapter: the difference of each adapted layer matrix between the
//! fine-tuned and the base model (both F32 GGUF files), reduced to rank r by a truncated SVD
//! (randomised subspace iteration, then an exact eigen-decomposition of the small projected
//! matrix), written with driftwatch's own GGUF writer as an adapter llama.cpp loads over the
//! base. What a rank-r adapter cannot carry (the rest of each difference, and the changes to
//! embeddings and norms) is measured and reported, never hidden.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::gguf::{self, GgufInfo, GgufWriter, TensorInfo};

/// Why an adapter cannot be extracted.
#[derive(Debug, thiserror::Error)]
pub enum ExtractError {
    #[error("{path}: {cause}")]
    Gguf { path: String, cause: gguf::GgufError },
    #[error("cannot read {path}: {cause}")]
    Io { path: String, cause: std::io::Error },
    #[error("{0}")]
    Mismatch(String),
    #[error("--rank must be at least 1, not {0}")]
    Rank(usize),
}

/// What the extraction kept and lost.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Extraction {
    /// Matrices adapted.
    pub matrices: usize,
    /// The rank.
    pub rank: usize,
    /// Share of the adapted matrices' squared difference (Frobenius) the adapter carries.
    pub energy_kept: f64,
    /// Tensors that changed but that an adapter cannot carry (1-D norms, embeddings, output).
    pub changed_not_adapted: Vec<String>,
}

/// A row-major matrix of `rows` × `cols`.
#[derive(Debug, Clone, PartialEq)]
pub struct Matrix {
    pub rows: usize,
    pub cols: usize,
    pub data: Vec<f64>,
}

impl Matrix {
    fn zeros(rows: usize, cols: usize) -> Matrix {
        Matrix { rows, cols, data: vec![0.0; rows * cols] }
    }
    fn at(&self, r: usize, c: usize) -> f64 {
        self.data[r * self.cols + c]
    }
    /// self · other.
    fn mul(&self, other: &Matrix) -> Matrix {
        let mut out = Matrix::zeros(self.rows, other.cols);
        for i in 0..self.rows {
            for k in 0..self.cols {
                let a = self.data[i * self.cols + k];
                if a == 0.0 {
                    continue;
                }
                let row = &other.data[k * other.cols..(k + 1) * other.cols];
                let dst = &mut out.data[i * other.cols..(i + 1) * other.cols];
                for (d, b) in dst.iter_mut().zip(row) {
                    *d += a * b;
                }
            }
        }
        out
    }
    fn transpose(&self) -> Matrix {
        let mut out = Matrix::zeros(self.cols, self.rows);
        for i in 0..self.rows {
            for j in 0..self.cols {
                out.data[j * self.rows + i] = self.data[i * self.cols + j];
            }
        }
        out
    }
    fn frobenius2(&self) -> f64 {
        self.data.iter().map(|x| x * x).sum()
    }
}

/// Orthonormalises the columns of `m` in place (modified Gram–Schmidt, twice for accuracy);
/// columns that vanish stay zero.
fn orthonormalize_columns(m: &mut Matrix) {
    for _pass in 0..2 {
        for j in 0..m.cols {
            for k in 0..j {
                let dot: f64 = (0..m.rows).map(|i| m.at(i, j) * m.at(i, k)).sum();
                for i in 0..m.rows {
                    let v = m.at(i, k);
                    m.data[i * m.cols + j] -= dot * v;
                }
            }
            let norm = (0..m.rows).map(|i| m.at(i, j).powi(2)).sum::<f64>().sqrt();
            for i in 0..m.rows {
                m.data[i * m.cols + j] = if norm > 1e-300 { m.at(i, j) / norm } else { 0.0 };
            }
        }
    }
}

/// Eigen-decomposition of a symmetric matrix by cyclic Jacobi rotations: (eigenvalues,
/// eigenvectors as columns), in descending order of eigenvalue.
fn symmetric_eigen(a: &Matrix) -> (Vec<f64>, Matrix) {
    let n = a.rows;
    let mut a = a.clone();
    let mut v = Matrix::zeros(n, n);
    for i in 0..n {
        v.data[i * n + i] = 1.0;
    }
    for _sweep in 0..100 {
        let off: f64 = (0..n)
            .flat_map(|i| (0..n).filter(move |&j| j != i).map(move |j| (i, j)))
            .map(|(i, j)| a.at(i, j).powi(2))
            .sum();
        if off < 1e-30 * a.frobenius2().max(1e-300) {
            break;
        }
        for p in 0..n {
            for q in p + 1..n {
                let apq = a.at(p, q);
                if apq.abs() < 1e-300 {
                    continue;
                }
                let theta = (a.at(q, q) - a.at(p, p)) / (2.0 * apq);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let t = if theta == 0.0 { 1.0 } else { t };
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for k in 0..n {
                    let (akp, akq) = (a.at(k, p), a.at(k, q));
                    a.data[k * n + p] = c * akp - s * akq;
                    a.data[k * n + q] = s * akp + c * akq;
                }
                for k in 0..n {
                    let (apk, aqk) = (a.at(p, k), a.at(q, k));
                    a.data[p * n + k] = c * apk - s * aqk;
                    a.data[q * n + k] = s * apk + c * aqk;
                }
                for k in 0..n {
                    let (vkp, vkq) = (v.at(k, p), v.at(k, q));
                    v.data[k * n + p] = c * vkp - s * vkq;
                    v.data[k * n + q] = s * vkp + c * vkq;
                }
            }
        }
    }
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&i, &j| a.at(j, j).total_cmp(&a.at(i, i)));
    let values = order.iter().map(|&i| a.at(i, i)).collect();
    let mut vecs = Matrix::zeros(n, n);
    for (dst, &src) in order.iter().enumerate() {
        for k in 0..n {
            vecs.data[k * n + dst] = v.at(k, src);
        }
    }
    (values, vecs)
}

/// The best rank-`rank` factors of `m` (rows × cols): (B, A) with B rows × r and A r × cols, so
/// that B·A ≈ m, found by randomised subspace iteration (oversampled by 8, `iters` power
/// iterations) seeded by `seed`. B carries the singular values.
pub fn low_rank(m: &Matrix, rank: usize, iters: usize, seed: u64) -> (Matrix, Matrix) {
    let l = (rank + 8).min(m.rows).min(m.cols);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let omega =
        Matrix { rows: m.cols, cols: l, data: (0..m.cols * l).map(|_| crate::synth::normal(&mut rng)).collect() };
    let mt = m.transpose();
    let mut q = m.mul(&omega);
    orthonormalize_columns(&mut q);
    for _ in 0..iters {
        let mut z = mt.mul(&q);
        orthonormalize_columns(&mut z);
        q = m.mul(&z);
        orthonormalize_columns(&mut q);
    }
    // m ≈ Q·(Qᵀm); Qᵀm = Us Σ Vᵀ from the eigen-decomposition of (Qᵀm)(Qᵀm)ᵀ.
    let small = q.transpose().mul(m); // l × cols
    let (values, us) = symmetric_eigen(&small.mul(&small.transpose()));
    let r = rank.min(l);
    let u = q.mul(&us); // rows × l
    let mut b = Matrix::zeros(m.rows, r);
    let mut a = Matrix::zeros(r, m.cols);
    let ut_small = us.transpose().mul(&small); // l × cols: row k = σ_k v_kᵀ
    for (k, value) in values.iter().enumerate().take(r) {
        let sigma = value.max(0.0).sqrt();
        for i in 0..m.rows {
            b.data[i * r + k] = u.at(i, k) * sigma;
        }
        for j in 0..m.cols {
            a.data[k * m.cols + j] = if sigma > 1e-300 { ut_small.at(k, j) / sigma } else { 0.0 };
        }
    }
    (b, a)
}

fn read_f32(path: &Path, info: &GgufInfo, t: &TensorInfo) -> Result<Vec<f32>, ExtractError> {
    if t.ggml_type.code != 0 {
        return Err(ExtractError::Mismatch(format!(
            "{}: tensor {} is {}, not F32 (extract from F32 models: llama-quantize --allow-requantize IN OUT F32)",
            path.display(),
            t.name,
            t.ggml_type.name
        )));
    }
    let io = |cause| ExtractError::Io { path: path.display().to_string(), cause };
    let mut f = std::fs::File::open(path).map_err(io)?;
    f.seek(SeekFrom::Start(info.data_offset + t.offset)).map_err(io)?;
    let mut bytes = vec![0u8; t.size as usize];
    f.read_exact(&mut bytes).map_err(io)?;
    Ok(bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
}

/// Extracts the rank-`rank` adapter of `tuned` over `base` for the block matrices named in
/// `targets` (short names such as `attn_q`), and writes it to `out`.
pub fn extract(
    base: &Path,
    tuned: &Path,
    targets: &[String],
    rank: usize,
    out: &Path,
) -> Result<Extraction, ExtractError> {
    if rank == 0 {
        return Err(ExtractError::Rank(rank));
    }
    let open = |p: &Path| gguf::inspect(p).map_err(|cause| ExtractError::Gguf { path: p.display().to_string(), cause });
    let (bi, ti) = (open(base)?, open(tuned)?);
    let mut w = GgufWriter::new();
    let arch = bi.architecture.clone().unwrap_or_else(|| "llama".into());
    w.string("general.architecture", &arch)
        .string("general.type", "adapter")
        .string("general.name", "driftwatch: rank-r extraction of a full fine-tune's weight difference")
        .string("adapter.type", "lora")
        // alpha = rank: llama.cpp scales B·A by alpha / rank = 1.
        .f32("adapter.lora.alpha", rank as f32)
        .u32("driftwatch.extracted.rank", rank as u32);
    let (mut kept, mut total, mut matrices) = (0.0, 0.0, 0);
    let mut changed_not_adapted = Vec::new();
    for t in &ti.tensors {
        let b = bi.tensor(&t.name).ok_or_else(|| {
            ExtractError::Mismatch(format!("{} has a tensor {} that {} lacks", tuned.display(), t.name, base.display()))
        })?;
        if b.dims != t.dims {
            return Err(ExtractError::Mismatch(format!("tensor {}: shape {:?} vs {:?}", t.name, t.dims, b.dims)));
        }
        let short = t.name.strip_prefix("blk.").and_then(|r| r.split_once('.')).map(|(_, rest)| rest);
        let adapted = t.dims.len() == 2 && short.is_some_and(|s| targets.iter().any(|x| s == format!("{x}.weight")));
        let (tw, bw) = (read_f32(tuned, &ti, t)?, read_f32(base, &bi, b)?);
        let diff: Vec<f64> = tw.iter().zip(&bw).map(|(x, y)| f64::from(*x) - f64::from(*y)).collect();
        if !adapted {
            if diff.iter().any(|d| *d != 0.0) {
                changed_not_adapted.push(t.name.clone());
            }
            continue;
        }
        // ggml's ne = [n_in, n_out]: n_out rows of n_in, i.e. the matrix ΔW (n_out × n_in).
        let (n_in, n_out) = (t.dims[0] as usize, t.dims[1] as usize);
        let m = Matrix { rows: n_out, cols: n_in, data: diff };
        let (bm, am) = low_rank(&m, rank, 2, matrices as u64);
        let approx = bm.mul(&am);
        let e2 = m.frobenius2();
        let resid: f64 = m.data.iter().zip(&approx.data).map(|(x, y)| (x - y).powi(2)).sum();
        total += e2;
        kept += e2 - resid;
        let r = bm.cols;
        // lora_a: ne [n_in, r] = r rows of n_in (A); lora_b: ne [r, n_out] = n_out rows of r (B).
        w.tensor_f32(
            &format!("{}.lora_a", t.name),
            &[n_in as u64, r as u64],
            am.data.iter().map(|x| *x as f32).collect(),
        );
        w.tensor_f32(
            &format!("{}.lora_b", t.name),
            &[r as u64, n_out as u64],
            bm.data.iter().map(|x| *x as f32).collect(),
        );
        matrices += 1;
    }
    if matrices == 0 {
        return Err(ExtractError::Mismatch(format!(
            "no 2-D block tensors named {targets:?} (e.g. blk.0.attn_q.weight)"
        )));
    }
    crate::testbed::write_whole(out, &{
        let mut v = Vec::new();
        w.write_to(&mut v).map_err(|cause| ExtractError::Io { path: out.display().to_string(), cause })?;
        v
    })
    .map_err(|cause| ExtractError::Io { path: out.display().to_string(), cause })?;
    Ok(Extraction { matrices, rank, energy_kept: if total > 0.0 { kept / total } else { 1.0 }, changed_not_adapted })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn random(rows: usize, cols: usize, seed: u64) -> Matrix {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        Matrix { rows, cols, data: (0..rows * cols).map(|_| crate::synth::normal(&mut rng)).collect() }
    }

    #[test]
    fn an_exactly_low_rank_matrix_is_recovered() {
        // 40 × 24 of rank 3.
        let m = random(40, 3, 1).mul(&random(3, 24, 2));
        let (b, a) = low_rank(&m, 3, 2, 9);
        assert_eq!((b.rows, b.cols, a.rows, a.cols), (40, 3, 3, 24));
        let err: f64 = m.data.iter().zip(&b.mul(&a).data).map(|(x, y)| (x - y).powi(2)).sum();
        assert!(err < 1e-18 * m.frobenius2(), "relative error {}", err / m.frobenius2());
    }

    #[test]
    fn truncation_keeps_the_largest_singular_directions() {
        // Singular values 10, 5, 1 along orthogonal directions: rank 2 keeps 125 of 126.
        let mut u = random(30, 3, 3);
        orthonormalize_columns(&mut u);
        let mut v = random(20, 3, 4);
        orthonormalize_columns(&mut v);
        let mut s = Matrix::zeros(3, 3);
        for (i, x) in [10.0, 5.0, 1.0].iter().enumerate() {
            s.data[i * 3 + i] = *x;
        }
        let m = u.mul(&s).mul(&v.transpose());
        let (b, a) = low_rank(&m, 2, 2, 5);
        let resid: f64 = m.data.iter().zip(&b.mul(&a).data).map(|(x, y)| (x - y).powi(2)).sum();
        assert!((resid - 1.0).abs() < 1e-9, "residual {resid}");
    }

    #[test]
    fn eigen_of_a_symmetric_matrix() {
        let a = Matrix { rows: 2, cols: 2, data: vec![2.0, 1.0, 1.0, 2.0] };
        let (vals, vecs) = symmetric_eigen(&a);
        assert!((vals[0] - 3.0).abs() < 1e-12 && (vals[1] - 1.0).abs() < 1e-12, "{vals:?}");
        assert!((vecs.at(0, 0).abs() - std::f64::consts::FRAC_1_SQRT_2).abs() < 1e-12);
    }

    /// A tiny "model": two blocks with attn_q (n_in 6, n_out 4) and a norm.
    fn model(path: &Path, delta: impl Fn(&str, usize) -> f32) {
        let mut w = GgufWriter::new();
        w.string("general.architecture", "llama");
        for blk in 0..2 {
            let name = format!("blk.{blk}.attn_q.weight");
            let data = (0..24).map(|i| (i as f32) * 0.01 + delta(&name, i)).collect();
            w.tensor_f32(&name, &[6, 4], data);
            let norm = format!("blk.{blk}.attn_norm.weight");
            let data = (0..6).map(|i| 1.0 + delta(&norm, i)).collect();
            w.tensor_f32(&norm, &[6], data);
        }
        w.write(path).unwrap();
    }

    #[test]
    fn extraction_writes_an_adapter_that_reproduces_a_low_rank_change() {
        let dir = tempfile::tempdir().unwrap();
        let (base, tuned, out) = (dir.path().join("b.gguf"), dir.path().join("t.gguf"), dir.path().join("a.gguf"));
        model(&base, |_, _| 0.0);
        // A rank-1 change (outer product) in block 1's attn_q; block 0's norm moves too.
        model(&tuned, |name, i| match name {
            "blk.1.attn_q.weight" => ((i / 6) as f32 + 1.0) * ((i % 6) as f32 - 2.5) * 0.1,
            "blk.0.attn_norm.weight" => 0.5,
            _ => 0.0,
        });
        let e = extract(&base, &tuned, &["attn_q".into()], 1, &out).unwrap();
        assert_eq!(e.matrices, 2);
        assert!((e.energy_kept - 1.0).abs() < 1e-6, "{e:?}");
        assert_eq!(e.changed_not_adapted, vec!["blk.0.attn_norm.weight".to_string()]);
        let info = gguf::inspect(&out).unwrap();
        assert!(matches!(info.kind, gguf::GgufKind::Adapter(_)), "{:?}", info.kind);
        let a = info.tensor("blk.1.attn_q.weight.lora_a").unwrap();
        let b = info.tensor("blk.1.attn_q.weight.lora_b").unwrap();
        assert_eq!((a.dims.clone(), b.dims.clone()), (vec![6, 1], vec![1, 4]));
        // B·A read back equals the change: ΔW[o][i] = Σ_k B[o][k]·A[k][i].
        let (av, bv) = (read_f32(&out, &info, a).unwrap(), read_f32(&out, &info, b).unwrap());
        for (o, b) in bv.iter().enumerate() {
            for (i, a) in av.iter().enumerate() {
                let want = (o as f32 + 1.0) * (i as f32 - 2.5) * 0.1;
                assert!((b * a - want).abs() < 1e-5, "({o},{i}): {} vs {want}", b * a);
            }
        }
        // Bad input: a rank of 0, a base without the tensor, a non-GGUF file.
        assert!(matches!(extract(&base, &tuned, &["attn_q".into()], 0, &out), Err(ExtractError::Rank(0))));
        assert!(matches!(extract(&base, &tuned, &["ffn_up".into()], 1, &out), Err(ExtractError::Mismatch(_))));
        std::fs::write(dir.path().join("bad.gguf"), b"nope").unwrap();
        let err = extract(&dir.path().join("bad.gguf"), &tuned, &["attn_q".into()], 1, &out).unwrap_err();
        assert!(err.to_string().contains("bad.gguf"), "{err}");
    }
}
