//! Q4_K and Q6_K weights repacked at load into groups of 16 rows interleaved value by value (the idea of
//! llama.cpp's `block_q4_Kx8` "repack" layout), with the sub-block scales unpacked to one byte each.
//!
//! Why: the GGUF layout puts one row's 256 values in a block, so a kernel over it ends with a horizontal
//! sum per (row, token) and applies each 32-value sub-block's scale in floats. Here one 512-bit register
//! holds 2 consecutive values of each of 16 rows as i16 (`[row 0: k, k+1 | row 1: k, k+1 | ...]`), so a
//! `vpdpwssd` against a broadcast pair of 16-bit activations adds 2 products to 16 rows' sums at once:
//! the lanes are the outputs (no horizontal sums), the sub-block scale is multiplied into the unpacked
//! weights once per row group (not once per token), and sums stay in integers for a whole super-block
//! (`kmat`'s bounds), so the float work is a few instructions per 256 values.
//!
//! A super-block of a group (16 rows x 256 values), 64-byte aligned:
//! - Q4_K, 2368 bytes: `qs [2048]` nibbles, `sc [8][16]` and `m [8][16]` (6-bit scales and mins of
//!   sub-block `j`, row `i`), `d [16]`, `dmin [16]` (f16).
//! - Q6_K, 3392 bytes: `ql [2048]` low nibbles, `qh [1024]` high 2 bits, `sc [16][16]` i8 (one per 16
//!   values), `d [16]` f32.
//!
//! Nibbles come in chunks of 64 bytes = 8 values of 16 rows, in the order the kernels unpack them:
//! value `8 c + 2 m + (e % 2)` of row `e / 2` (`e` in 0..32, `m` in 0..4) of chunk `c` is the low nibble
//! of byte `64 c + 32 (m % 2) + e` for `m < 2`, the high nibble for `m >= 2` (so `and 0xF` / `shift 4`
//! of the 64 bytes, zero-extended to i16 by 32-byte halves, give the pairs for `m = 0, 1, 2, 3`). Q6_K's
//! high bits of the same value sit at bits `2 m` of byte `32 c + e` of `qh`.
//!
//! [`KLayout::Quads`] (the 8-bit activation path, [`kmat8`](super::kmat8)) keeps every table and only
//! moves the nibbles: byte `64 c + 4 i + l` of chunk `c` holds value `8 c + l` of row `i` (`l` in 0..4) in
//! its low nibble and value `8 c + 4 + l` in its high one, so `and 0xF` / `shift 4` of the 64 bytes give
//! 16 rows x 4 consecutive values, the u8 operand of `vpdpbusd` (AVX2: rows 0..8 and 8..16 as the two
//! 32-byte halves). Q6_K's high 2 bits of the value at chunk byte `p = 4 i + l` sit in byte `p % 32` of the
//! chunk's 32 `qh` bytes, at bits `2 (2 (v % 8 / 4) + i / 8)`: each of the four quarters of the two
//! registers is one 2-bit plane of the same 32 bytes.
//!
//! Q4_0 / Q4_1 / Q8_0 take the same kind of layout at the AVX2 and AVX-512 levels ([`PackedK::pack_b32`]): 32
//! values per block, the [`KLayout::Pairs`] nibbles of 4 chunks and each row's `d` and offset `m` as
//! f16 ([`q41`]), or Q8_0's bytes as 16 rows' value pairs ([`q80`]).
//!
//! Rows past `n` (the last group of a matrix whose rows are not a multiple of 16) are zeros.

use super::dispatch::{self, Isa};
use super::lines::{Line, Lines};
use super::{q4_k, q6_k, QMatrix, QType};
use half::f16;

/// Rows per interleaved group (the lanes of one 512-bit register of i32 sums).
pub const ROWS: usize = 16;
/// Values per super-block.
pub const SB: usize = 256;
/// Bytes per chunk of 8 values x 16 rows of nibbles.
pub const CHUNK: usize = 64;

pub mod q4k {
    pub const QS: usize = 0;
    pub const SC: usize = 2048;
    pub const M: usize = SC + 128;
    pub const D: usize = M + 128;
    pub const DMIN: usize = D + 32;
    pub const BYTES: usize = DMIN + 32;
}

pub mod q6k {
    pub const QL: usize = 0;
    pub const QH: usize = 2048;
    pub const SC: usize = QH + 1024;
    pub const D: usize = SC + 256;
    pub const BYTES: usize = D + 64;
}

/// A Q4_0 / Q4_1 block of a group (16 rows x 32 values), 320 bytes: `qs [256]` nibbles (4 chunks),
/// `d [16]` and `m [16]` (f16), `w = d q + m` with `q` in 0..=15 (Q4_1's own `m`; Q4_0's `m = -8 d`).
pub mod q41 {
    pub const VALUES: usize = 32;
    pub const QS: usize = 0;
    pub const D: usize = 256;
    pub const M: usize = D + 32;
    pub const BYTES: usize = M + 32;
}

/// A Q8_0 block of a group (16 rows x 32 values), 576 bytes: `qs [512]`, pair `p` (values `2 p`, `2 p + 1`)
/// of row `i` at bytes `32 p + 2 i` and `32 p + 2 i + 1` (i8: `vpmovsxbw` of each 16-byte half gives the
/// i16 pairs of rows 0..8 and 8..16), `d [16]` (f16), 32 bytes of padding.
pub mod q80 {
    pub const VALUES: usize = 32;
    pub const QS: usize = 0;
    pub const D: usize = 512;
    pub const BYTES: usize = D + 64;
}

/// Where the nibbles of a group sit, which fixes the activations the kernels take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KLayout {
    /// i16 pairs for `vpdpwssd` against 15-bit activations ([`kmat`](super::kmat)).
    Pairs,
    /// u8 quads for `vpdpbusd` against 8-bit activations ([`kmat8`](super::kmat8)).
    Quads,
}

impl KLayout {
    /// The layout (so the activation width) of the model's Q4_K / Q6_K weights: `MLC_CPU_KQUANT_ACT=8`
    /// or `15`, read once; 8 by default (it meets the Qwen fidelity bound, see `kmat8`).
    pub fn active() -> KLayout {
        static ACTIVE: std::sync::OnceLock<KLayout> = std::sync::OnceLock::new();
        *ACTIVE.get_or_init(|| match crate::switches::value("MLC_CPU_KQUANT_ACT").as_deref().map(str::trim) {
            Some("15") => KLayout::Pairs,
            Some("8") | None => KLayout::Quads,
            Some(v) => {
                log::warn!("MLC_CPU_KQUANT_ACT={v} is not 8 or 15; using 8");
                KLayout::Quads
            }
        })
    }

    /// Where value `v` (0..256) of row `i` (0..16) of a super-block lives: (chunk byte, nibble shift,
    /// high-bit byte offset within `qh`, high-bit shift).
    #[inline]
    pub fn place(self, i: usize, v: usize) -> (usize, u32, usize, u32) {
        match self {
            KLayout::Pairs => place(i, v),
            KLayout::Quads => {
                let (c, w) = (v / 8, v % 8);
                let p = 4 * i + w % 4;
                (CHUNK * c + p, 4 * (w / 4) as u32, 32 * c + p % 32, 2 * (2 * (w / 4) + i / 8) as u32)
            }
        }
    }
}

/// A Q4_K or Q6_K matrix `[n, k]` in the interleaved layout.
pub struct PackedK {
    pub qtype: QType,
    pub layout: KLayout,
    pub n: usize,
    pub k: usize,
    data: Lines,
}

/// The next-weight reads of [`ahead`](super::ahead) may name this one: they stop before its memory goes.
impl Drop for PackedK {
    fn drop(&mut self) {
        super::ahead::forget(self.data.as_ptr() as usize, self.data.len() * 64);
    }
}

impl std::fmt::Debug for PackedK {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PackedK({:?}, {:?}, [{}, {}])", self.qtype, self.layout, self.n, self.k)
    }
}

/// One row's super-block as plain numbers: `q` the stored integers (Q4_K 0..=15, Q6_K 0..=63).
struct Plain {
    q: [u8; SB],
    /// Q4_K: 8 scales; Q6_K: 16 scales (as u8 bits of the i8).
    sc: [u8; 16],
    m: [u8; 8],
    d: [u8; 4],
    dmin: [u8; 2],
}

fn plain_q4k(blk: &[u8]) -> Plain {
    let scales: &[u8; 12] = blk[4..16].try_into().expect("12 scale bytes");
    let mut p = Plain { q: [0; SB], sc: [0; 16], m: [0; 8], d: [0; 4], dmin: [blk[2], blk[3]] };
    p.d[..2].copy_from_slice(&blk[0..2]);
    for j in 0..8 {
        (p.sc[j], p.m[j]) = q4_k::scale_min(j, scales);
        let qs = &blk[16 + 32 * (j / 2)..][..32];
        for l in 0..32 {
            p.q[32 * j + l] = (qs[l] >> (4 * (j % 2))) & 0xF;
        }
    }
    p
}

fn plain_q6k(blk: &[u8]) -> Plain {
    let d = half::f16::from_le_bytes([blk[q6_k::D], blk[q6_k::D + 1]]).to_f32();
    let mut p = Plain { q: [0; SB], sc: [0; 16], m: [0; 8], d: d.to_le_bytes(), dmin: [0; 2] };
    p.sc.copy_from_slice(&blk[q6_k::SCALES..q6_k::SCALES + 16]);
    for v in 0..SB {
        let (j, l) = (v / 32, v % 32);
        let (n, g) = (j / 4, j % 4);
        let lo = (blk[64 * n + 32 * (g & 1) + l] >> (4 * (g >> 1))) & 0xF;
        let hi = (blk[q6_k::QH + 32 * n + l] >> (2 * g)) & 3;
        p.q[v] = lo | (hi << 4);
    }
    p
}

/// Where value `v` (0..256) of row `i` (0..16) of a super-block lives: (chunk byte, nibble shift, high-bit
/// byte offset within `qh`, high-bit shift).
#[inline]
pub fn place(i: usize, v: usize) -> (usize, u32, usize, u32) {
    let (c, w) = (v / 8, v % 8);
    let (m, e) = (w / 2, 2 * i + w % 2);
    (CHUNK * c + 32 * (m % 2) + e, 4 * (m / 2) as u32, 32 * c + e, 2 * m as u32)
}

impl PackedK {
    /// Repacks GGUF rows in the 15-bit path's layout; `None` for types other than Q4_K / Q6_K.
    pub fn pack(w: &QMatrix) -> Option<PackedK> {
        Self::pack_as(w, KLayout::Pairs)
    }

    /// Repacks GGUF rows in `layout`; `None` for types other than Q4_K / Q6_K.
    pub fn pack_as(w: &QMatrix, layout: KLayout) -> Option<PackedK> {
        let (plain, bytes): (fn(&[u8]) -> Plain, usize) = match w.qtype {
            QType::Q4K => (plain_q4k, q4k::BYTES),
            QType::Q6K => (plain_q6k, q6k::BYTES),
            _ => return None,
        };
        let (nsb, groups) = (w.k / SB, w.n.div_ceil(ROWS));
        let block_bytes = w.qtype.block_bytes();
        let mut data = Lines::zeroed(groups * nsb * bytes / 64);
        let lines_per_group = nsb * bytes / 64;
        let fill = |g: usize, lines: &mut [Line]| {
            // SAFETY: `Line` is 64 plain bytes, so its slice is `64 * len` initialized bytes.
            let out = unsafe { std::slice::from_raw_parts_mut(lines.as_mut_ptr() as *mut u8, lines.len() * 64) };
            for i in 0..ROWS.min(w.n - g * ROWS) {
                let row = w.row(g * ROWS + i);
                for s in 0..nsb {
                    let p = plain(&row[s * block_bytes..(s + 1) * block_bytes]);
                    let b = &mut out[s * bytes..(s + 1) * bytes];
                    put(w.qtype, layout, &p, i, b);
                }
            }
        };
        super::pool::for_each_chunk_mut(&mut data, lines_per_group, fill);
        Some(PackedK { qtype: w.qtype, layout, n: w.n, k: w.k, data })
    }

    /// Whether [`for_matmul`](Self::for_matmul) repacks `qtype` at `isa` (lowered to what the CPU has).
    pub fn repacks(qtype: QType, isa: Isa) -> bool {
        match qtype {
            QType::Q4K | QType::Q6K => true,
            QType::Q4_0 | QType::Q4_1 | QType::Q8_0 => isa.min(dispatch::detect()) >= Isa::Avx2,
            _ => false,
        }
    }

    /// The layout the matmul at `isa` takes `w` in, or `None` where it reads the GGUF blocks in place:
    /// K-quants always (in [`KLayout::active`]); Q4_0 / Q4_1 / Q8_0 at the AVX2 and AVX-512 levels,
    /// where 16 rows per register (pair of registers at AVX2) need 1-2 integer instructions per 16
    /// products and a few float ones per 32 values, against 7 per 32 products in
    /// [`tile`](super::tile)'s row-by-row form (which stays the scalar level's kernel).
    pub fn for_matmul(w: &QMatrix, isa: Isa) -> Option<PackedK> {
        if !Self::repacks(w.qtype, isa) {
            return None;
        }
        match w.qtype {
            QType::Q4_0 | QType::Q4_1 | QType::Q8_0 => Self::pack_b32(w),
            _ => Self::pack_as(w, KLayout::active()),
        }
    }

    /// Repacks Q4_0 / Q4_1 ([`q41`]) or Q8_0 ([`q80`]) rows for the 15-bit activations; `None` for other
    /// types and for a Q4_0 matrix with a scale whose `-8 d` does not fit an f16 (`|d| > 8188`).
    pub fn pack_b32(w: &QMatrix) -> Option<PackedK> {
        let (qs_at, bytes) = match w.qtype {
            QType::Q4_0 => (2, q41::BYTES),
            QType::Q4_1 => (4, q41::BYTES),
            QType::Q8_0 => (2, q80::BYTES),
            _ => return None,
        };
        let block_bytes = w.qtype.block_bytes();
        let f16_at = |b: &[u8], i: usize| f16::from_le_bytes([b[i], b[i + 1]]);
        // (d, m) of row r's block j, as the f16 bits the kernels read (Q8_0 has no m).
        let scales = |r: usize, j: usize| -> Option<([u8; 2], [u8; 2])> {
            let blk = &w.row(r)[j * block_bytes..];
            let d = f16_at(blk, 0);
            let m = match w.qtype {
                QType::Q4_1 => f16_at(blk, 2),
                QType::Q4_0 => {
                    let m = f16::from_f32(-8.0 * d.to_f32());
                    (m.to_f32() == -8.0 * d.to_f32()).then_some(m)?
                }
                _ => f16::ZERO,
            };
            Some((d.to_le_bytes(), m.to_le_bytes()))
        };
        let nb = w.k / q41::VALUES;
        if w.qtype == QType::Q4_0 && (0..w.n).any(|r| (0..nb).any(|j| scales(r, j).is_none())) {
            return None;
        }
        let (groups, lines_per_group) = (w.n.div_ceil(ROWS), nb * bytes / 64);
        let mut data = Lines::zeroed(groups * lines_per_group);
        let fill = |g: usize, lines: &mut [Line]| {
            // SAFETY: `Line` is 64 plain bytes, so its slice is `64 * len` initialized bytes.
            let out = unsafe { std::slice::from_raw_parts_mut(lines.as_mut_ptr() as *mut u8, lines.len() * 64) };
            for i in 0..ROWS.min(w.n - g * ROWS) {
                let r = g * ROWS + i;
                for j in 0..nb {
                    let qs = &w.row(r)[j * block_bytes + qs_at..];
                    let b = &mut out[j * bytes..(j + 1) * bytes];
                    let (d, m) = scales(r, j).expect("checked above");
                    if w.qtype == QType::Q8_0 {
                        for v in 0..q80::VALUES {
                            b[q80::QS + 32 * (v / 2) + 2 * i + v % 2] = qs[v];
                        }
                        b[q80::D + 2 * i..][..2].copy_from_slice(&d);
                        continue;
                    }
                    for v in 0..q41::VALUES {
                        let q = if v < 16 { qs[v] & 0xF } else { qs[v - 16] >> 4 };
                        let (byte, shift, _, _) = place(i, v);
                        b[q41::QS + byte] |= q << shift;
                    }
                    b[q41::D + 2 * i..][..2].copy_from_slice(&d);
                    b[q41::M + 2 * i..][..2].copy_from_slice(&m);
                }
            }
        };
        super::pool::for_each_chunk_mut(&mut data, lines_per_group, fill);
        Some(PackedK { qtype: w.qtype, layout: KLayout::Pairs, n: w.n, k: w.k, data })
    }

    /// Values per (super-)block of a group: 256 for the K-quants, 32 for Q4_0 / Q4_1 / Q8_0.
    pub fn block_values(&self) -> usize {
        match self.qtype {
            QType::Q4_0 | QType::Q4_1 | QType::Q8_0 => q41::VALUES,
            _ => SB,
        }
    }

    /// Bytes per (super-)block of a group.
    pub fn block_bytes(&self) -> usize {
        match self.qtype {
            QType::Q4K => q4k::BYTES,
            QType::Q4_0 | QType::Q4_1 => q41::BYTES,
            QType::Q8_0 => q80::BYTES,
            _ => q6k::BYTES,
        }
    }

    pub fn groups(&self) -> usize {
        self.n.div_ceil(ROWS)
    }

    /// Group `g`'s (super-)blocks, `k / block_values` of [`block_bytes`](Self::block_bytes) each.
    pub fn group(&self, g: usize) -> &[u8] {
        let len = self.k / self.block_values() * self.block_bytes();
        // SAFETY: `data` is `groups * len` initialized bytes (see `pack`).
        let all = unsafe { std::slice::from_raw_parts(self.data.as_ptr() as *const u8, self.data.len() * 64) };
        &all[g * len..(g + 1) * len]
    }

    pub fn bytes(&self) -> usize {
        self.data.len() * 64
    }

    /// `[n, k]` f32 read back from the packed layout (ties the layout to GGUF's in tests).
    pub fn dequantize(&self) -> Vec<f32> {
        let f16_at = |b: &[u8], i: usize| half::f16::from_le_bytes([b[i], b[i + 1]]).to_f32();
        let bytes = self.block_bytes();
        let mut out = vec![0f32; self.n * self.k];
        for (r, y) in out.chunks_exact_mut(self.k).enumerate() {
            let (grp, i) = (self.group(r / ROWS), r % ROWS);
            for (s, ys) in y.chunks_exact_mut(self.block_values()).enumerate() {
                let b = &grp[s * bytes..(s + 1) * bytes];
                for (v, y) in ys.iter_mut().enumerate() {
                    let (byte, shift, hbyte, hshift) = self.layout.place(i, v);
                    let lo = ((b[byte] >> shift) & 0xF) as f32;
                    *y = match self.qtype {
                        QType::Q4_0 | QType::Q4_1 => f16_at(b, q41::D + 2 * i) * lo + f16_at(b, q41::M + 2 * i),
                        QType::Q8_0 => f16_at(b, q80::D + 2 * i) * b[q80::QS + 32 * (v / 2) + 2 * i + v % 2] as i8 as f32,
                        QType::Q4K => {
                            let j = v / 32;
                            f16_at(b, q4k::D + 2 * i) * b[q4k::SC + 16 * j + i] as f32 * lo
                                - f16_at(b, q4k::DMIN + 2 * i) * b[q4k::M + 16 * j + i] as f32
                        }
                        _ => {
                            let q = lo as i32 | ((((b[q6k::QH + hbyte] >> hshift) & 3) as i32) << 4);
                            let d = f32::from_le_bytes(b[q6k::D + 4 * i..][..4].try_into().expect("4 bytes"));
                            d * (b[q6k::SC + 16 * (v / 16) + i] as i8 as i32 * (q - 32)) as f32
                        }
                    };
                }
            }
        }
        out
    }
}

/// Writes row `i`'s super-block `p` into its group's block `b`.
fn put(qtype: QType, layout: KLayout, p: &Plain, i: usize, b: &mut [u8]) {
    for v in 0..SB {
        let (byte, shift, hbyte, hshift) = layout.place(i, v);
        b[byte] |= (p.q[v] & 0xF) << shift;
        if qtype == QType::Q6K {
            b[q6k::QH + hbyte] |= (p.q[v] >> 4) << hshift;
        }
    }
    match qtype {
        QType::Q4K => {
            for j in 0..8 {
                b[q4k::SC + 16 * j + i] = p.sc[j];
                b[q4k::M + 16 * j + i] = p.m[j];
            }
            b[q4k::D + 2 * i..][..2].copy_from_slice(&p.d[..2]);
            b[q4k::DMIN + 2 * i..][..2].copy_from_slice(&p.dmin);
        }
        _ => {
            for j in 0..16 {
                b[q6k::SC + 16 * j + i] = p.sc[j];
            }
            b[q6k::D + 4 * i..][..4].copy_from_slice(&p.d);
        }
    }
}
