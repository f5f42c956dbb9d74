//! The sharded math equals the unsharded one: an MLP, attention split by heads (each rank with its own
//! heads' K and V, as a sharded KV cache holds them) and the vocabulary-parallel embedding and lm_head,
//! over 2 and 4 ranks running as threads ([`LocalGroup`]).

use super::*;
use crate::model::linear::{Linear, Weight};
use candle_core::{DType, Device, Tensor, D};
use std::sync::Arc;

fn randn(shape: &[usize], seed: u64) -> Tensor {
    // A fixed generator so the test is reproducible (candle's randn is not seedable on the CPU).
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 33) as f32 / (1u64 << 31) as f32 - 1.0) * 0.5
        })
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

fn linear(w: Tensor) -> Linear {
    Linear { weight: Weight::Dense(w), bias: None }
}

fn max_rel(a: &Tensor, b: &Tensor) -> f32 {
    let d = (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    let m = b.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    d / m.max(1e-12)
}

/// Runs `f(rank's communicator)` on `world` threads; returns the ranks' results in rank order.
fn on_ranks<T: Send>(world: usize, f: impl Fn(Arc<dyn Communicator>) -> T + Sync) -> Vec<T> {
    let comms = LocalGroup::new(world);
    std::thread::scope(|s| {
        let handles: Vec<_> = comms.into_iter().map(|c| {
            let f = &f;
            s.spawn(move || f(Arc::new(c)))
        }).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

#[test]
fn all_reduce_and_all_gather_give_every_rank_the_same_result() {
    let out = on_ranks(3, |c| {
        let x = Tensor::new(&[c.rank() as f32, 1.0], &Device::Cpu).unwrap();
        (c.all_reduce_sum(&x).unwrap().to_vec1::<f32>().unwrap(), c.all_gather(&x, 0).unwrap().to_vec1::<f32>().unwrap())
    });
    for (sum, gathered) in out {
        assert_eq!(sum, vec![3.0, 3.0]);
        assert_eq!(gathered, vec![0.0, 1.0, 1.0, 1.0, 2.0, 1.0]);
    }
}

#[test]
fn a_gated_mlp_sharded_over_2_and_4_ranks_equals_the_whole() {
    let (h, i, t) = (32, 64, 5);
    let (gate, up, down, x) = (randn(&[i, h], 1), randn(&[i, h], 2), randn(&[h, i], 3), randn(&[t, h], 4));
    let whole = linear(down.clone()).forward(&(candle_nn::ops::silu(&linear(gate.clone()).forward(&x).unwrap()).unwrap() * linear(up.clone()).forward(&x).unwrap()).unwrap()).unwrap();
    for world in [2, 4] {
        let outs = on_ranks(world, |c| {
            let r = c.rank();
            let g = ColumnParallel { local: linear(shard_rows(&gate, r, world).unwrap()) };
            let u = ColumnParallel { local: linear(shard_rows(&up, r, world).unwrap()) };
            let d = RowParallel { local: linear(shard_cols(&down, r, world).unwrap()), bias: None, comm: c.clone() };
            let act = (candle_nn::ops::silu(&g.forward(&x).unwrap()).unwrap() * u.forward(&x).unwrap()).unwrap(); // [t, i / world]
            d.forward(&act).unwrap()
        });
        for y in &outs {
            assert!(max_rel(y, &whole) < 1e-5, "world {world}: {}", max_rel(y, &whole));
        }
    }
}

/// Causal attention of `q, k, v: [T, heads, d]` (k, v with `kv_heads`) in plain ops.
fn causal_attention(q: &Tensor, k: &Tensor, v: &Tensor) -> Tensor {
    let (t, nh, d) = q.dims3().unwrap();
    let nkv = k.dim(1).unwrap();
    let rep = nh / nkv;
    let k = k.repeat((1, rep, 1)).unwrap().reshape((t, rep, nkv, d)).unwrap().transpose(1, 2).unwrap().reshape((t, nh, d)).unwrap();
    let v = v.repeat((1, rep, 1)).unwrap().reshape((t, rep, nkv, d)).unwrap().transpose(1, 2).unwrap().reshape((t, nh, d)).unwrap();
    let (q, k, v) = (q.transpose(0, 1).unwrap().contiguous().unwrap(), k.transpose(0, 1).unwrap().contiguous().unwrap(), v.transpose(0, 1).unwrap().contiguous().unwrap());
    let scores = (q.matmul(&k.t().unwrap()).unwrap() / (d as f64).sqrt()).unwrap(); // [heads, T, T]
    let mask: Vec<f32> = (0..t * t).map(|i| if i % t > i / t { f32::NEG_INFINITY } else { 0.0 }).collect();
    let mask = Tensor::from_vec(mask, (t, t), &Device::Cpu).unwrap();
    let p = candle_nn::ops::softmax(&scores.broadcast_add(&mask).unwrap(), D::Minus1).unwrap();
    p.matmul(&v).unwrap().transpose(0, 1).unwrap().contiguous().unwrap() // [T, heads, d]
}

#[test]
fn attention_sharded_by_heads_equals_the_whole() {
    let (h, nh, nkv, d, t) = (32, 8, 4, 8, 6);
    let (wq, wk, wv, wo, x) = (randn(&[nh * d, h], 5), randn(&[nkv * d, h], 6), randn(&[nkv * d, h], 7), randn(&[h, nh * d], 8), randn(&[t, h], 9));
    let attend = |wq: &Tensor, wk: &Tensor, wv: &Tensor, heads: usize, kv_heads: usize| {
        let q = x.matmul(&wq.t().unwrap()).unwrap().reshape((t, heads, d)).unwrap();
        let k = x.matmul(&wk.t().unwrap()).unwrap().reshape((t, kv_heads, d)).unwrap();
        let v = x.matmul(&wv.t().unwrap()).unwrap().reshape((t, kv_heads, d)).unwrap();
        causal_attention(&q, &k, &v).reshape((t, heads * d)).unwrap()
    };
    let whole = linear(wo.clone()).forward(&attend(&wq, &wk, &wv, nh, nkv)).unwrap();
    for world in [2, 4] {
        let outs = on_ranks(world, |c| {
            let r = c.rank();
            // Rows of q/k/v are head after head, so whole heads go to each rank (with their KV heads).
            let local = attend(&shard_rows(&wq, r, world).unwrap(), &shard_rows(&wk, r, world).unwrap(), &shard_rows(&wv, r, world).unwrap(), nh / world, nkv / world);
            RowParallel { local: linear(shard_cols(&wo, r, world).unwrap()), bias: None, comm: c.clone() }.forward(&local).unwrap()
        });
        for y in &outs {
            assert!(max_rel(y, &whole) < 1e-5, "world {world}: {}", max_rel(y, &whole));
        }
    }
}

#[test]
fn vocabulary_parallel_embedding_and_lm_head_equal_the_whole() {
    let (vocab, h) = (40, 16);
    let table = randn(&[vocab, h], 10);
    let tokens = Tensor::new(&[0u32, 39, 17, 20, 5], &Device::Cpu).unwrap();
    let whole_rows = table.index_select(&tokens, 0).unwrap();
    let whole_logits = whole_rows.matmul(&table.t().unwrap()).unwrap();
    for world in [2, 4] {
        let outs = on_ranks(world, |c| {
            let r = c.rank();
            let local = shard_rows(&table, r, world).unwrap();
            let emb = VocabParallelEmbedding { local: local.clone(), start: r * vocab / world, comm: c.clone() };
            let rows = emb.forward(&tokens).unwrap();
            // lm_head tied to the embedding: column-parallel over the vocabulary, logits gathered.
            let logits = c.all_gather(&ColumnParallel { local: linear(local) }.forward(&rows).unwrap(), 1).unwrap();
            (rows, logits)
        });
        for (rows, logits) in &outs {
            assert_eq!(rows.to_dtype(DType::F32).unwrap().to_vec2::<f32>().unwrap(), whole_rows.to_vec2::<f32>().unwrap());
            assert!(max_rel(logits, &whole_logits) < 1e-5);
        }
    }
}

#[test]
fn uneven_splits_are_refused() {
    let w = randn(&[6, 4], 11);
    assert!(shard_rows(&w, 0, 4).is_err());
    assert!(shard_cols(&w, 0, 3).is_err());
}

#[test]
fn a_rank_that_fails_aborts_the_collective_the_others_wait_in_and_reset_restores_the_group() {
    let comms = LocalGroup::new(3);
    let x = Tensor::new(&[1f32], &Device::Cpu).unwrap();
    std::thread::scope(|s| {
        // Ranks 0 and 1 enter an all-reduce; rank 2 fails instead and aborts.
        let waiting: Vec<_> = comms[..2].iter().map(|c| s.spawn(|| c.all_reduce_sum(&x))).collect();
        std::thread::sleep(std::time::Duration::from_millis(50));
        comms[2].abort();
        for w in waiting {
            let e = w.join().unwrap().unwrap_err().to_string();
            assert!(e.contains(ABORTED), "{e}");
        }
    });
    assert!(comms[0].all_reduce_sum(&x).unwrap_err().to_string().contains(ABORTED), "an aborted group stays failed");
    comms[0].reset();
    let sums = std::thread::scope(|s| {
        let hs: Vec<_> = comms.iter().map(|c| s.spawn(|| c.all_reduce_sum(&x).unwrap().to_vec1::<f32>().unwrap())).collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect::<Vec<_>>()
    });
    assert_eq!(sums, vec![vec![3.0]; 3]);
}
