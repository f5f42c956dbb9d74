//! Tests of the CPU attention (`cpu.rs`): sinks, the e4m3 table, and the same bits whatever the split
//! into tasks and whatever the level (portable or AVX2) and cache type.

use super::paged_attention;
use crate::attention::{AttentionMetadata, AttnParams, SeqAttention};
use candle_core::{CpuStorage, Layout, Shape};

/// One query (position 2) of one head over three keys, with and without a sink: the sink takes its
/// share of the denominator and adds no value, as transformers' eager gpt-oss attention does.
#[test]
fn a_sink_joins_the_denominator_only() {
    let meta = AttentionMetadata {
        slot_mapping: vec![2],
        seqs: vec![SeqAttention { query_start: 0, query_len: 1, context_len: 3, block_table: vec![0] }],
        block_size: 4,
    };
    let q = [1.0f32, 0.5];
    let keys = [[0.2f32, -0.1], [0.7, 0.3], [-0.4, 0.9], [0.0, 0.0]];
    let values = [[1.0f32, 2.0], [-1.0, 0.5], [3.0, -2.0], [0.0, 0.0]];
    let flat = |x: &[[f32; 2]; 4]| CpuStorage::F32(x.iter().flatten().copied().collect());
    let (ql, kl) = (Layout::contiguous(Shape::from((1, 1, 2))), Layout::contiguous(Shape::from((1, 4, 1, 2))));
    let params = AttnParams::causal(0.5);
    let run = |sinks: Option<&[f32]>| {
        let (out, _) = paged_attention(&meta, &params, sinks, None, &CpuStorage::F32(q.to_vec()), &ql, &flat(&keys), &kl, &flat(&values), &kl).unwrap();
        match out {
            CpuStorage::F32(v) => v,
            _ => unreachable!(),
        }
    };
    let sink = 0.3f32;
    let exps: Vec<f32> = keys[..3].iter().map(|k| (0.5 * (q[0] * k[0] + q[1] * k[1])).exp()).collect();
    let expect = |extra: f32| -> Vec<f32> {
        let sum: f32 = exps.iter().sum::<f32>() + extra;
        (0..2).map(|d| exps.iter().zip(&values).map(|(e, v)| e / sum * v[d]).sum()).collect()
    };
    let close = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-6);
    assert!(close(&run(Some(&[sink])), &expect(sink.exp())), "{:?} vs {:?}", run(Some(&[sink])), expect(sink.exp()));
    assert!(close(&run(None), &expect(0.0)));
    // A very negative sink is no sink.
    assert!(close(&run(Some(&[-1e4])), &run(None)));
    // One sink per head, or an error.
    assert!(paged_attention(&meta, &params, Some(&[0.0, 0.0]), None, &CpuStorage::F32(q.to_vec()), &ql, &flat(&keys), &kl, &flat(&values), &kl).is_err());
}

/// The table decodes every e4m3 bit pattern as float8 (candle's conversion) does: each finite value
/// converts back to its own bits, exactly.
#[test]
fn the_e4m3_table_is_the_format() {
    use candle_core::{DType, Device, Tensor};
    let table = crate::attention::kv_rows::e4m3_table();
    let finite: Vec<(usize, f32)> = table.iter().copied().enumerate().filter(|(_, x)| !x.is_nan()).collect();
    assert_eq!(finite.len(), 254);
    assert_eq!((table[0x7E], table[0x08], table[0x01]), (448.0, 2f32.powi(-6), 2f32.powi(-9)));
    let xs = Tensor::from_vec(finite.iter().map(|p| p.1).collect::<Vec<_>>(), finite.len(), &Device::Cpu).unwrap();
    let f8 = xs.to_dtype(DType::F8E4M3).unwrap();
    let (storage, _) = f8.storage_and_layout();
    let candle_core::Storage::Cpu(CpuStorage::F8E4M3(v)) = &*storage else { panic!() };
    let bits = crate::attention::kv_rows::bytemuck_e4m3(v);
    for (&(b, x), &got) in finite.iter().zip(bits) {
        // 0x00 and 0x80 are +0 and -0: both convert to a zero.
        assert!(got as usize == b || (x == 0.0 && got & 0x7F == 0), "{b:#x} ({x}) converted to {got:#x}");
    }
    assert_eq!(f8.to_dtype(DType::F32).unwrap().to_vec1::<f32>().unwrap(), finite.iter().map(|p| p.1).collect::<Vec<_>>());
}

/// Over 300 keys: a prefill (the query heads of a group sharing each K/V row in one task) and the same
/// tokens attended one at a time (a task per head) give the same bits, a token's result not depending
/// on how the step is split into tasks; and both equal a plain softmax attention in f64 within f32
/// rounding.
#[test]
fn heads_sharing_rows_compute_as_heads_alone_and_as_the_plain_attention() {
    use crate::attention::{AttentionMetadata, PagedKvCache, SeqAttention};
    use candle_core::{DType, Device, Tensor};
    let (kvh, heads, d, bs, n) = (2, 6, 16, 8, 300usize);
    let blocks = n.div_ceil(bs);
    let cache = PagedKvCache::new(1, blocks, bs, kvh, d, DType::F32, &Device::Cpu).unwrap();
    let rnd = |shape: &[usize]| Tensor::randn(0f32, 1f32, shape, &Device::Cpu).unwrap();
    let (k, v, q) = (rnd(&[n, kvh, d]), rnd(&[n, kvh, d]), rnd(&[n, heads, d]));
    let meta = |first: usize, len: usize| AttentionMetadata {
        slot_mapping: (first as u32..(first + len) as u32).collect(),
        seqs: vec![SeqAttention { query_start: 0, query_len: len, context_len: first + len, block_table: (0..blocks as u32).collect() }],
        block_size: bs,
    };
    let step = cache.prepare(meta(0, n)).unwrap();
    cache.write(0, &k, &v, &step).unwrap();
    let whole = cache.attend(0, &q, &step, 0.25).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let (kf, vf, qf) = (k.to_vec3::<f32>().unwrap(), v.to_vec3::<f32>().unwrap(), q.to_vec3::<f32>().unwrap());
    for t in [0, 127, 128, 200, 299] {
        let one = cache.prepare(meta(t, 1)).unwrap();
        let got = cache.attend(0, &q.narrow(0, t, 1).unwrap(), &one, 0.25).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(got, whole[t * heads * d..(t + 1) * heads * d], "token {t}");
        for h in 0..heads {
            let g = h / (heads / kvh);
            let scores: Vec<f64> = (0..=t).map(|j| 0.25 * (0..d).map(|x| qf[t][h][x] as f64 * kf[j][g][x] as f64).sum::<f64>()).collect();
            let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let z: f64 = scores.iter().map(|s| (s - m).exp()).sum();
            for x in 0..d {
                let want = (0..=t).map(|j| (scores[j] - m).exp() / z * vf[j][g][x] as f64).sum::<f64>();
                let err = (got[h * d + x] as f64 - want).abs();
                assert!(err < 1e-5, "token {t} head {h} dim {x}: {} vs {want}", got[h * d + x]);
            }
        }
    }
}

/// Through the cache: an FP8 cache attends within e4m3's relative rounding of the f32 one at any
/// magnitude (rows scaled to e4m3's range: values of 1e-3, all subnormal or zero unscaled, keep 3
/// mantissa bits, and values of 1e4, past e4m3's 448, do not saturate).
#[test]
fn an_fp8_cache_attends_as_the_f32_one_within_e4m3_rounding() {
    use crate::attention::{AttentionMetadata, PagedKvCache, SeqAttention};
    use candle_core::{DType, Device, Tensor};
    let (kvh, heads, d, bs) = (2, 4, 16, 4);
    let meta = AttentionMetadata {
        slot_mapping: (0..6).collect(),
        seqs: vec![SeqAttention { query_start: 0, query_len: 6, context_len: 6, block_table: vec![0, 1] }],
        block_size: bs,
    };
    let run = |dtype: DType, k: &Tensor, v: &Tensor, q: &Tensor| {
        let cache = PagedKvCache::new(1, 2, bs, kvh, d, dtype, &Device::Cpu).unwrap();
        let step = cache.prepare(meta.clone()).unwrap();
        cache.write(0, k, v, &step).unwrap();
        cache.attend(0, q, &step, 0.25).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap()
    };
    let rnd = |n: &[usize], s: f64| (Tensor::randn(0f32, 1f32, n, &Device::Cpu).unwrap() * s).unwrap();
    let q = rnd(&[6, heads, d], 1.0);
    for magnitude in [1e-3, 1.0, 1e4] {
        // Keys scaled back to unit size for the scores, so that every magnitude tests the same softmax.
        let (k, v) = (rnd(&[6, kvh, d], 1.0), rnd(&[6, kvh, d], magnitude));
        let (k, q) = ((&k * magnitude).unwrap(), (&q / magnitude).unwrap());
        let (fp8, f32s) = (run(DType::F8E4M3, &k, &v, &q), run(DType::F32, &k, &v, &q));
        let err = fp8.iter().zip(&f32s).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max) / magnitude as f32;
        // e4m3's relative rounding is 2^-4; V rows average to below 1, scores move by about 0.1.
        assert!(err > 0.0 && err < 0.25, "magnitude {magnitude}: largest difference {err} (relative)");
        // Exactly: the f32 cache holding each row rounded as described (scale = row max / 448) attends
        // as the FP8 cache does, so the only difference is e4m3's rounding.
        let rounded = |x: &Tensor| {
            let scale = row_scales(x);
            let q = x.broadcast_div(&scale).unwrap().to_dtype(DType::F8E4M3).unwrap().to_dtype(DType::F32).unwrap();
            q.broadcast_mul(&scale).unwrap()
        };
        assert_eq!(fp8, run(DType::F32, &rounded(&k), &rounded(&v), &q), "magnitude {magnitude}");
    }
}

/// `[T, kv_heads, 1]`: each row's largest magnitude / 448 as an f32 division (what kv_write.cu computes).
fn row_scales(x: &candle_core::Tensor) -> candle_core::Tensor {
    let (t, h, _) = x.dims3().unwrap();
    let rows = x.to_vec3::<f32>().unwrap();
    let s: Vec<f32> = rows.iter().flatten().map(|r| (r.iter().fold(0f32, |m, v| m.max(v.abs())) / 448.0).max(f32::MIN_POSITIVE)).collect();
    candle_core::Tensor::from_vec(s, (t, h, 1), x.device()).unwrap()
}

/// The FP8 write keeps each row's scale as max|row| / 448 divided in f32, as the CUDA write does (the
/// caches of both must hold the same bits: tests/gpu/test_kernels.py), not multiplied by 1/448, which
/// differs by an ulp for row maxima such as 1.5, 3 and 0.9 (and then moves ties of x / scale).
#[test]
fn the_fp8_write_divides_each_row_max_by_448() {
    use crate::attention::{AttentionMetadata, PagedKvCache, SeqAttention};
    use candle_core::{DType, Device, Tensor};
    let (kvh, d, bs) = (2, 4, 4);
    let maxima = [1.5f32, 3.0, 0.9, 0.75, 1.0, 2.5, 1e-3, 0.0];
    assert!(maxima[..4].iter().all(|m| m / 448.0 != m * (1.0 / 448.0)), "the case must tell the two apart");
    let rows: Vec<f32> = maxima.iter().flat_map(|&m| [m * 0.25, -m, m * 0.5, m * 0.125]).collect();
    let x = Tensor::from_vec(rows, (4, kvh, d), &Device::Cpu).unwrap();
    let meta = AttentionMetadata {
        slot_mapping: (0..4).collect(),
        seqs: vec![SeqAttention { query_start: 0, query_len: 4, context_len: 4, block_table: vec![0] }],
        block_size: bs,
    };
    let cache = PagedKvCache::new(1, 1, bs, kvh, d, DType::F8E4M3, &Device::Cpu).unwrap();
    let step = cache.prepare(meta).unwrap();
    cache.write(0, &x, &x, &step).unwrap();
    let got = cache.fp8_scales[0].k.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let want: Vec<f32> = maxima.iter().map(|m| (m / 448.0).max(f32::MIN_POSITIVE)).collect();
    assert_eq!(got, want);
}

/// An f16 cache (each row rounded to nearest even by the write) attends, on every body this CPU can run
/// (the portable one, and the AVX2 + F16C one that the avx2 and avx512 levels run), exactly as an f32
/// cache holding the same rounded rows does, the same bits at every level; and within f16's rounding of
/// the f32 cache of the unrounded rows. SmolLM2's heads (64 wide, 3 KV heads of 3 query heads) and 20
/// wide ones (tails past 8 lanes), over 150 keys (two chunks and a part), as a prefill (a task per
/// (token, KV head)) and as a decode step (chunks as tasks).
#[test]
fn an_f16_cache_attends_as_the_f32_one_of_its_rounded_rows_at_every_level() {
    use crate::attention::{AttentionMetadata, PagedKvCache, SeqAttention};
    use crate::quant::cpu::dispatch::Isa;
    use candle_core::{DType, Device, Storage, Tensor};
    let levels = Isa::available();
    eprintln!("levels: {levels:?}");
    for d in [64usize, 20] {
        let (kvh, heads, bs, n) = (3, 9, 16, 150usize);
        let blocks = n.div_ceil(bs);
        let rnd = |shape: &[usize]| Tensor::randn(0f32, 1f32, shape, &Device::Cpu).unwrap();
        let (k, v, q) = (rnd(&[n, kvh, d]), rnd(&[n, kvh, d]), rnd(&[n, heads, d]));
        let rounded = |x: &Tensor| x.to_dtype(DType::F16).unwrap().to_dtype(DType::F32).unwrap();
        assert_ne!(rounded(&k).flatten_all().unwrap().to_vec1::<f32>().unwrap(), k.flatten_all().unwrap().to_vec1::<f32>().unwrap());
        // Blocks in reverse order, so rows are not where a contiguous cache would hold them.
        let table: Vec<u32> = (0..blocks as u32).rev().collect();
        let slot = |p: usize| table[p / bs] * bs as u32 + (p % bs) as u32;
        let meta = |first: usize, len: usize| AttentionMetadata {
            slot_mapping: (first..first + len).map(slot).collect(),
            seqs: vec![SeqAttention { query_start: 0, query_len: len, context_len: first + len, block_table: table.clone() }],
            block_size: bs,
        };
        let fill = |dtype: DType, k: &Tensor, v: &Tensor| {
            let cache = PagedKvCache::new(1, blocks, bs, kvh, d, dtype, &Device::Cpu).unwrap();
            cache.write(0, k, v, &cache.prepare(meta(0, n)).unwrap()).unwrap();
            assert_eq!(cache.layers[0].k.dtype(), dtype);
            cache
        };
        let (f16s, exact, plain) = (fill(DType::F16, &k, &v), fill(DType::F32, &rounded(&k), &rounded(&v)), fill(DType::F32, &k, &v));
        let run = |cache: &PagedKvCache, avx2: bool, first: usize, len: usize| {
            let m = meta(first, len);
            let qn = q.narrow(0, first, len).unwrap().contiguous().unwrap();
            let (qs, ql) = qn.storage_and_layout();
            let (ks, kl) = cache.layers[0].k.storage_and_layout();
            let (vs, vl) = cache.layers[0].v.storage_and_layout();
            let (Storage::Cpu(qs), Storage::Cpu(ks), Storage::Cpu(vs)) = (&*qs, &*ks, &*vs) else { panic!() };
            match super::paged_attention_on(avx2, &m, &AttnParams::causal(0.125), None, None, qs, ql, ks, kl, vs, vl).unwrap().0 {
                CpuStorage::F32(o) => o,
                _ => unreachable!(),
            }
        };
        for (first, len) in [(0, n), (n - 1, 1), (70, 1)] {
            let want = run(&exact, false, first, len);
            for &isa in &levels {
                let got = run(&f16s, isa >= Isa::Avx2, first, len);
                assert_eq!(got, want, "head_dim {d}, {isa:?}, tokens {first}..{}", first + len);
            }
            let unrounded = run(&plain, false, first, len);
            let err = want.iter().zip(&unrounded).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            // f16 keeps 11 significant bits (relative rounding 2^-12): outputs of unit size move by ~1e-3.
            assert!(err > 0.0 && err < 1e-2, "head_dim {d}, tokens {first}..{}: largest difference {err}", first + len);
        }
    }
}
