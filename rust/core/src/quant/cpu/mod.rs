//! Quantized matmul on the CPU: GGUF weight blocks (Q4_0, Q4_1, Q8_0, Q4_K, Q6_K, MXFP4) times activations
//! quantized to 8 bits plus an 8-bit residual per block, with integer dot products (llama.cpp's
//! `vec_dot_q4_1_q8_1` scheme, one stage more: see [`act`]) and the instruction set chosen at run time
//! ([`dispatch`]).
//!
//! Per call: the activations `[t, k]` become [`act::ActBlock`]s once, then [`gemm`] splits the output
//! rows over [`pool`] (one thread per physical core) and runs [`tile`] kernels of 4 rows x 4 tokens
//! over them ([`pairs`] on AVX-512).
//! Each type's file holds its block layout, the f32 dequantization (the reference) and how a block
//! unpacks for the scalar and x86 tile kernels.
//!
//! Q4_K / Q6_K take their own path: weights repacked into groups of 16 rows ([`kpack`]), activations
//! as int8 per 32 values ([`kmat8`], the default) or as 15-bit integers ([`kmat`], the exact one, with
//! `MLC_CPU_KQUANT_ACT=15`). At the AVX2 and AVX-512 levels Q4_0 / Q4_1 / Q8_0 take it too, with the 15-bit
//! activations ([`kpack::PackedK::for_matmul`] says which weights are repacked at which level).
//!
//! A token's result does not depend on the batch it runs in (see [`tile`]).

pub mod act;
pub mod ahead;
pub mod dispatch;
mod gemm;
pub mod kmat;
pub mod kmat8;
pub mod kpack;
mod lines;
#[cfg(target_arch = "x86_64")]
mod kx86;
#[cfg(target_arch = "x86_64")]
mod kx86_8;
pub mod mxfp4;
pub mod op;
mod pairs;
pub mod pool;
pub mod q4_0;
pub mod q4_1;
pub mod q4_k;
pub mod q6_k;
pub mod q8_0;
pub mod tile;
mod tile16;
#[cfg(target_arch = "x86_64")]
mod x86;

use candle_core::quantized::GgmlDType;
pub use dispatch::Isa;
pub use tile::Kernels;

/// `qtype`'s kernels at `isa`, lowered to what this CPU has.
pub fn kernels(qtype: QType, isa: Isa) -> Kernels {
    let isa = isa.min(dispatch::detect());
    match qtype {
        QType::Q4_0 => q4_0::kernels(isa),
        QType::Q4_1 => q4_1::kernels(isa),
        QType::Q8_0 => q8_0::kernels(isa),
        QType::Q4K => q4_k::kernels(isa),
        QType::Q6K => q6_k::kernels(isa),
        QType::Mxfp4 => mxfp4::kernels(isa),
    }
}

/// The GGUF block types these kernels multiply; others stay on candle's quantized matmul.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QType {
    Q4_0,
    Q4_1,
    Q8_0,
    Q4K,
    Q6K,
    /// ggml type 39 (gpt-oss's experts), which candle does not read: never from a [`GgmlDType`].
    Mxfp4,
}

impl QType {
    pub fn from_ggml(t: GgmlDType) -> Option<QType> {
        match t {
            GgmlDType::Q4_0 => Some(QType::Q4_0),
            GgmlDType::Q4_1 => Some(QType::Q4_1),
            GgmlDType::Q8_0 => Some(QType::Q8_0),
            GgmlDType::Q4K => Some(QType::Q4K),
            GgmlDType::Q6K => Some(QType::Q6K),
            _ => None,
        }
    }

    pub fn block_bytes(self) -> usize {
        match self {
            QType::Q4_0 => q4_0::BLOCK_BYTES,
            QType::Q4_1 => q4_1::BLOCK_BYTES,
            QType::Q8_0 => q8_0::BLOCK_BYTES,
            QType::Q4K => q4_k::BLOCK_BYTES,
            QType::Q6K => q6_k::BLOCK_BYTES,
            QType::Mxfp4 => mxfp4::BLOCK_BYTES,
        }
    }

    /// Weights per block.
    pub fn block_values(self) -> usize {
        match self {
            QType::Q4_0 | QType::Q4_1 | QType::Q8_0 | QType::Mxfp4 => act::QK,
            QType::Q4K => q4_k::BLOCK_VALUES,
            QType::Q6K => q6_k::BLOCK_VALUES,
        }
    }

    /// One row's blocks -> `out: [k]` f32, the reference every kernel is tested against.
    pub fn dequantize_row(self, w: &[u8], out: &mut [f32]) {
        match self {
            QType::Q4_0 => q4_0::dequantize_row(w, out),
            QType::Q4_1 => q4_1::dequantize_row(w, out),
            QType::Q8_0 => q8_0::dequantize_row(w, out),
            QType::Q4K => q4_k::dequantize_row(w, out),
            QType::Q6K => q6_k::dequantize_row(w, out),
            QType::Mxfp4 => mxfp4::dequantize_row(w, out),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum QuantError {
    #[error("{qtype:?} weight [{n}, {k}]: {message}")]
    Shape { qtype: QType, n: usize, k: usize, message: String },
    #[error("activations of {len} values are not rows of the weight's {k} inputs")]
    Activations { len: usize, k: usize },
}

/// A quantized weight `[n, k]` as GGUF stores it: `n` rows of `k / block_values` blocks.
#[derive(Debug, Clone, Copy)]
pub struct QMatrix<'a> {
    pub qtype: QType,
    pub data: &'a [u8],
    pub n: usize,
    pub k: usize,
}

impl<'a> QMatrix<'a> {
    pub fn new(qtype: QType, data: &'a [u8], n: usize, k: usize) -> Result<Self, QuantError> {
        let shape_err = |message: String| QuantError::Shape { qtype, n, k, message };
        if k == 0 || k % qtype.block_values() != 0 {
            return Err(shape_err(format!("k is not a positive multiple of {}", qtype.block_values())));
        }
        let want = n * (k / qtype.block_values()) * qtype.block_bytes();
        if data.len() != want {
            return Err(shape_err(format!("{} bytes of blocks, the shape needs {want}", data.len())));
        }
        Ok(QMatrix { qtype, data, n, k })
    }

    fn row_bytes(&self) -> usize {
        self.k / self.qtype.block_values() * self.qtype.block_bytes()
    }

    /// Row `r`'s blocks.
    pub fn row(&self, r: usize) -> &'a [u8] {
        let b = self.row_bytes();
        &self.data[r * b..(r + 1) * b]
    }

    /// `[n, k]` f32.
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.n * self.k];
        for (r, y) in out.chunks_exact_mut(self.k).enumerate() {
            self.qtype.dequantize_row(self.row(r), y);
        }
        out
    }
}

/// `x: [t, k]` f32 row-major -> `[t, n]`: `x` quantized per block ([`act`]), integer dot products with
/// the weight's blocks at instruction set `isa` (lowered to what the CPU has).
pub fn matmul(w: &QMatrix, x: &[f32], isa: Isa) -> Result<Vec<f32>, QuantError> {
    if x.len() % w.k != 0 {
        return Err(QuantError::Activations { len: x.len(), k: w.k });
    }
    if let Some(p) = kpack::PackedK::for_matmul(w, isa) {
        return Ok(matmul_packed(&p, x, isa));
    }
    let t = x.len() / w.k;
    let act = gemm::quantize_activations(x, w.k);
    Ok(gemm::matmul(w, &act, t, kernels(w.qtype, isa)))
}

/// `x: [t, k]` -> `[t, n]` against a repacked Q4_K / Q6_K weight ([`kpack`]), with the activations its
/// layout takes: 15-bit ([`kmat`]) or 8-bit ([`kmat8`]).
pub fn matmul_packed(w: &kpack::PackedK, x: &[f32], isa: Isa) -> Vec<f32> {
    match w.layout {
        kpack::KLayout::Pairs => kmat::matmul(w, &kmat::KAct::quantize(x, w.k), kmat::tiles(w.qtype, isa)),
        kpack::KLayout::Quads => kmat::matmul(w, &kmat8::KAct8::quantize(x, w.k), kmat8::tiles(w.qtype, isa)),
    }
}
