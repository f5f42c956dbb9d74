//! Step-level preparation of the attention metadata for the CUDA kernels: validation (so the kernels
//! can trust every index they read), the split-K plan for long-context decode, the query tiles of the
//! tiled prefill kernel, and one flat `u32` buffer holding every per-step array, uploaded once per step
//! and shared by all layers.

use super::AttentionMetadata;
use candle_core::{bail, Result};
use mlc_kernels::{ATTN_MAX_GROUP, ATTN_MAX_SPLITS, PREFILL_TILE_M};

/// Sequences with at most this many query tokens (decode, short chunks, speculative verification) split
/// their context across blocks; longer chunks already give the GPU one block per token and head.
pub const SPLIT_MAX_QUERY_LEN: usize = 16;
/// Fewest keys one partition covers: a 2048-token decode gets 16 partitions per head, 8192 tokens the
/// cap of 64. Was 64: with the tensor-core decode kernel (two 64-key tiles per partition, the second's
/// copy in flight under the first's work), 128 is faster at every shape measured on an H100, Llama-3-8B
/// heads, us per layer 64 -> 128 keys: batch 64 x 1,024 keys 175.6 -> 129.2, 256 x 300 214.0 -> 167.1,
/// 16 x 4,096 174.9 -> 131.8, 1 x 4,096 23.0 -> 15.9, 1 x 1,024 12.9 -> 12.5, 1 x 128 12.1 -> 11.0 (bf16; an
/// FP8 cache alike except 1 x 1,024, 13.3 -> 14.3). 256 is faster still at batch 16-256 (117.6 / 148.2 /
/// 118.4) but slower at batch 1 x 1,024 (13.9; FP8 18.4), and the partitions depend on the sequence
/// alone (a request's result does not change with its batch), so they cannot follow the batch
/// (benches/results/gpu_attn_split_keys_tc_h100_2026-12-07.jsonl).
pub const SPLIT_MIN_KEYS: usize = 128;

/// [`SPLIT_MIN_KEYS`], or `MLC_ATTN_SPLIT_MIN_KEYS` when set to a positive number (for measurements;
/// read once per process, so every step of it plans alike).
fn split_min_keys() -> usize {
    static KEYS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *KEYS.get_or_init(|| {
        crate::switches::number("MLC_ATTN_SPLIT_MIN_KEYS").filter(|&k| k > 0).unwrap_or(SPLIT_MIN_KEYS)
    })
}

/// Whether a sequence with `query_len` queries this step goes to the tiled prefill kernel (where the
/// dtype and head_dim have one; see `StepPlan::num_short_work`). Depends only on the sequence itself,
/// so a request's result does not change with the batch around it.
pub fn is_tiled(query_len: usize) -> bool {
    query_len > SPLIT_MAX_QUERY_LEN
}

/// Query heads one block of the per-token attention kernel serves: the largest divisor of the GQA group
/// (`heads / kv_heads`) up to [`ATTN_MAX_GROUP`], so that a block's heads share one KV head (read once
/// for all of them) and the grid's `heads / group` rows cover every head exactly once.
pub fn heads_per_block(heads: usize, kv_heads: usize) -> usize {
    let g = heads / kv_heads.max(1);
    (1..=g.min(ATTN_MAX_GROUP)).rev().find(|&d| g.is_multiple_of(d)).unwrap_or(1)
}

/// A `[start, start + len)` slice of [`StepPlan::packed`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Span {
    pub start: usize,
    pub len: usize,
}

/// Everything the kernels read besides q and the caches, as spans of one `u32` buffer.
#[derive(Debug, Clone, Default)]
pub struct StepPlan {
    pub num_tokens: usize,
    pub num_seqs: usize,
    /// Width of the padded block tables: the most blocks any sequence of the step needs.
    pub max_blocks: usize,
    /// Grid rows of the per-token attention kernel: one per (token, partition). The rows of sequences
    /// that are not tiled ([`is_tiled`]) come first: the first `num_short_work` rows cover exactly those,
    /// the rest the tiled sequences' tokens (one unsplit row each), which run on the per-token kernel
    /// only where the tiled kernel does not apply (f32, other head dims).
    pub num_work: usize,
    pub num_short_work: usize,
    /// Blocks of the tiled prefill kernel: one per `PREFILL_TILE_M` queries of a tiled sequence.
    pub num_tiles: usize,
    /// Tokens whose context is split (their partitions are merged by the last one to finish).
    pub num_split_tokens: usize,
    /// Rows of the f32 partial-result buffers (sum of the split tokens' partition counts).
    pub num_partials: usize,
    pub max_splits: usize,
    /// Fewest keys per partition ([`split_min_keys`]) the partitions were counted with; the kernel lays
    /// a sliding layer's partitions over its window with the same rule.
    pub split_keys: usize,
    /// `[num_tokens]` cache slot of each new token.
    pub slot_mapping: Span,
    /// `[num_seqs, max_blocks]` block tables, zero padded.
    pub block_tables: Span,
    /// `[num_seqs + 1]` first query token of each sequence (kept for kernels that walk sequences).
    pub query_start: Span,
    /// `[num_seqs]` tokens in the cache after this step's write.
    pub context_len: Span,
    /// `[num_tokens]` sequence index of each token.
    pub token_seq: Span,
    /// `[num_tokens]` position of each token; it attends to positions `0..=pos` (a layer with a sliding
    /// window only to the last `window` of them: the kernels apply windows, the plan is every layer's).
    pub token_pos: Span,
    /// `[num_tokens]` partitions of each token's keys (1 = not split).
    pub token_splits: Span,
    /// `[num_tokens]` first partial row of each split token (0 for the others).
    pub token_part: Span,
    /// `[num_work]` token and partition of each grid row.
    pub work_token: Span,
    pub work_split: Span,
    /// `[num_split_tokens]` the split tokens.
    pub split_tokens: Span,
    /// `[num_tiles]` sequence of each query tile and its first query (relative to the sequence's first
    /// query this step); the tiles with the most keys come first.
    pub tile_seq: Span,
    pub tile_start: Span,
    /// `[num_tokens]` the step's input token ids, only in fixed decode plans ([`plan_fixed_decode`]),
    /// which carry the whole step in one upload; empty otherwise.
    pub tokens: Span,
    /// `[num_tokens]` the rows of the rope tables the tokens read, only in fixed decode plans: their
    /// positions, offset for a sequence in Phi-3's long rope regime (the model's input positions).
    pub rope_pos: Span,
    pub packed: Vec<u32>,
}

/// Checks that the metadata describes a well-formed step over a cache of `num_blocks` blocks: the
/// sequences' query ranges tile `0..num_tokens` in order, every context fits its block table, every
/// block id and slot lies inside the cache, and every index fits in `u32`. Nothing more is asked of the
/// entries of positions before every layer's window: they may hold any block id below `num_blocks` (a
/// placeholder for a block handed back to the pool), and the kernels never dereference them.
pub fn validate(meta: &AttentionMetadata, num_blocks: usize, block_size: usize) -> Result<()> {
    if meta.block_size != block_size {
        bail!("attention metadata: block size {} != cache block size {block_size}", meta.block_size);
    }
    let num_slots = num_blocks * block_size;
    if u32::try_from(num_slots).is_err() || u32::try_from(meta.num_tokens()).is_err() {
        bail!("attention metadata: {num_slots} slots / {} tokens do not fit u32 indices", meta.num_tokens());
    }
    if let Some((t, &slot)) = meta.slot_mapping.iter().enumerate().find(|(_, &s)| s as usize >= num_slots) {
        bail!("attention metadata: token {t} maps to slot {slot}, outside the cache ({num_slots} slots)");
    }
    let mut next = 0;
    for (s, seq) in meta.seqs.iter().enumerate() {
        if seq.query_start != next {
            bail!("attention metadata: sequence {s} starts at token {}, expected {next}", seq.query_start);
        }
        next += seq.query_len;
        if seq.query_len > seq.context_len {
            bail!("attention metadata: sequence {s} has {} queries but a context of {}", seq.query_len, seq.context_len);
        }
        let needed = seq.context_len.div_ceil(block_size);
        if seq.block_table.len() < needed {
            bail!("attention metadata: sequence {s} has {} blocks for {} tokens", seq.block_table.len(), seq.context_len);
        }
        if let Some(&b) = seq.block_table[..needed].iter().find(|&&b| b as usize >= num_blocks) {
            bail!("attention metadata: sequence {s} uses block {b}, outside the cache ({num_blocks} blocks)");
        }
    }
    if next != meta.num_tokens() {
        bail!("attention metadata: sequences cover {next} tokens, the step has {}", meta.num_tokens());
    }
    Ok(())
}

/// Partitions of the keys `0..=pos` of a token whose sequence has `query_len` queries this step.
/// Depends only on the token itself, so a request's result does not change with the batch around it.
/// A layer with a sliding window splits only its window's keys, by the same rule within these
/// partitions (`min(splits, ceil(window keys / split_keys))` of them); the grid rows of the others
/// return at once (in the kernel: the plan is shared by every layer).
pub fn num_splits(query_len: usize, pos: usize) -> usize {
    if query_len > SPLIT_MAX_QUERY_LEN {
        return 1;
    }
    (pos + 1).div_ceil(split_min_keys()).clamp(1, ATTN_MAX_SPLITS)
}

struct Packer(Vec<u32>);

impl Packer {
    fn push(&mut self, values: impl IntoIterator<Item = u32>) -> Span {
        let start = self.0.len();
        self.0.extend(values);
        Span { start, len: self.0.len() - start }
    }
}

/// Builds the plan of a validated step (see [`validate`]).
pub fn plan(meta: &AttentionMetadata) -> StepPlan {
    let num_tokens = meta.num_tokens();
    let bs = meta.block_size.max(1);
    let max_blocks = meta.seqs.iter().map(|s| s.context_len.div_ceil(bs)).max().unwrap_or(0).max(1);
    let mut token_seq = vec![0u32; num_tokens];
    let mut token_pos = vec![0u32; num_tokens];
    let mut token_splits = vec![1u32; num_tokens];
    let mut token_part = vec![0u32; num_tokens];
    let (mut work_token, mut work_split, mut split_tokens) = (Vec::new(), Vec::new(), Vec::new());
    let mut long_tokens = Vec::new(); // tokens of tiled sequences: per-token rows after the short ones
    let mut tiles = Vec::new(); // (keys seen, sequence, first query)
    let mut num_partials = 0usize;
    let mut max_splits = 0usize;
    for (s, seq) in meta.seqs.iter().enumerate() {
        let first_pos = seq.context_len - seq.query_len;
        let tiled = is_tiled(seq.query_len);
        if tiled {
            for start in (0..seq.query_len).step_by(PREFILL_TILE_M) {
                let keys = first_pos + (start + PREFILL_TILE_M).min(seq.query_len);
                tiles.push((keys, s as u32, start as u32));
            }
        }
        for i in 0..seq.query_len {
            let t = seq.query_start + i;
            let splits = num_splits(seq.query_len, first_pos + i);
            token_seq[t] = s as u32;
            token_pos[t] = (first_pos + i) as u32;
            token_splits[t] = splits as u32;
            max_splits = max_splits.max(splits);
            if splits > 1 {
                token_part[t] = num_partials as u32;
                num_partials += splits;
                split_tokens.push(t as u32);
            }
            if tiled {
                long_tokens.push(t as u32); // never split (see `num_splits`)
                continue;
            }
            for z in 0..splits {
                work_token.push(t as u32);
                work_split.push(z as u32);
            }
        }
    }
    let num_short_work = work_token.len();
    work_split.extend(std::iter::repeat_n(0, long_tokens.len()));
    work_token.extend(long_tokens);
    // Heaviest tiles first, so the causal tail of the grid is made of short tiles.
    tiles.sort_by_key(|t| std::cmp::Reverse(t.0));
    let cap = 8 * num_tokens + meta.seqs.len() * (max_blocks + 2) + work_token.len() * 2 + tiles.len() * 2 + 1;
    let mut p = Packer(Vec::with_capacity(cap));
    let slot_mapping = p.push(meta.slot_mapping.iter().copied());
    let block_tables = p.push(meta.seqs.iter().flat_map(|s| {
        let used = s.context_len.div_ceil(bs);
        s.block_table[..used].iter().copied().chain(std::iter::repeat_n(0, max_blocks - used))
    }));
    let query_start = p.push(meta.seqs.iter().map(|s| s.query_start as u32).chain([num_tokens as u32]));
    let context_len = p.push(meta.seqs.iter().map(|s| s.context_len as u32));
    let token_seq = p.push(token_seq);
    let token_pos = p.push(token_pos);
    let token_splits = p.push(token_splits);
    let token_part = p.push(token_part);
    let num_work = work_token.len();
    let num_split_tokens = split_tokens.len();
    let work_token = p.push(work_token);
    let work_split = p.push(work_split);
    let split_tokens = p.push(split_tokens);
    let num_tiles = tiles.len();
    let tile_seq = p.push(tiles.iter().map(|t| t.1));
    let tile_start = p.push(tiles.iter().map(|t| t.2));
    p.0.push(0); // every span, even an empty last one, starts inside the buffer
    StepPlan {
        num_tokens,
        num_seqs: meta.seqs.len(),
        max_blocks,
        num_work,
        num_short_work,
        num_tiles,
        num_split_tokens,
        num_partials,
        max_splits,
        split_keys: split_min_keys(),
        slot_mapping,
        block_tables,
        query_start,
        context_len,
        token_seq,
        token_pos,
        token_splits,
        token_part,
        work_token,
        work_split,
        split_tokens,
        tile_seq,
        tile_start,
        tokens: Span::default(),
        rope_pos: Span::default(),
        packed: p.0,
    }
}

/// How the per-token kernel (paged_attention.cu) splits a token's keys for one layer: of the token's
/// `splits` planned partitions, the first `live` cover the keys `lo..n_keys` the layer attends (`lo` > 0
/// under a sliding window) in parts of `per_split` keys; the others return at once. Returns
/// `(live, per_split)`. For a full layer this is the plan's own partitioning. (The kernel computes it;
/// this mirror documents and tests the rule.)
pub fn layer_partitions(splits: usize, n_keys: usize, lo: usize, split_keys: usize) -> (usize, usize) {
    let n_win = n_keys - lo;
    let live = splits.min(n_win.div_ceil(split_keys.max(1))).max(1);
    (live, n_win.div_ceil(live))
}

/// Slot of a padding token in a fixed decode plan: outside every cache, so the KV writes skip it.
pub const PAD_SLOT: u32 = u32::MAX;

/// The shape a fixed decode plan is laid out for: every span's offset and every launch's grid depend
/// only on it, so a CUDA graph captured for one key replays any decode step planned with the same key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FixedDecodeKey {
    /// Token rows (the batch padded up to a capture size).
    pub bucket: usize,
    /// Grid rows per token: at least the most partitions any token of the step has (a power of two).
    pub split_cap: usize,
    /// Block-table width: the blocks of the longest context rounded up to a power of two (at least
    /// [`FIXED_MIN_BLOCKS`]), so that the upload stays proportional to the contexts of the step.
    pub max_blocks: usize,
}

/// Narrowest block table of a fixed decode plan.
pub const FIXED_MIN_BLOCKS: usize = 16;

impl FixedDecodeKey {
    /// The key for a decode step of `batch` sequences whose longest context is `max_context` tokens,
    /// or `None` when the batch exceeds `bucket` or the table would exceed `max_blocks_cap`.
    pub fn for_step(batch: usize, max_context: usize, bucket: usize, max_blocks_cap: usize, block_size: usize) -> Option<Self> {
        let splits = num_splits(1, max_context.max(1) - 1);
        let max_blocks = max_context.div_ceil(block_size.max(1)).next_power_of_two().max(FIXED_MIN_BLOCKS);
        if batch > bucket || max_blocks > max_blocks_cap {
            return None;
        }
        Some(FixedDecodeKey { bucket, split_cap: splits.next_power_of_two().min(ATTN_MAX_SPLITS), max_blocks })
    }

    /// Length of the packed buffer of a plan with this key (see [`plan_fixed_decode`]).
    pub fn packed_len(&self) -> usize {
        self.bucket * (10 + self.max_blocks + 2 * self.split_cap) + 2
    }
}

/// The plan of a decode step (every sequence has one query token and samples) padded to `key`: the
/// sequences' rows first, then padding rows (token 0 at position 0, slot [`PAD_SLOT`], an all-zero
/// block table) whose outputs are ignored. Every token is its own sequence and its own split token;
/// grid row `w` is partition `w % split_cap` of token `w / split_cap`, and the kernels skip rows past
/// a token's own partitions (`num_splits`, the same per-token rule as [`plan`], so results do not
/// depend on the padding). `tokens`: the step's input ids, `[num_seqs]`; `rope_pos`: the model's input
/// positions, `[num_seqs]` (the rope table rows). `None` if the step is not such a decode step or does
/// not fit the key.
pub fn plan_fixed_decode(meta: &AttentionMetadata, tokens: &[u32], rope_pos: &[u32], key: FixedDecodeKey) -> Option<StepPlan> {
    let n = meta.seqs.len();
    let FixedDecodeKey { bucket, split_cap, max_blocks } = key;
    let bs = meta.block_size.max(1);
    if n > bucket || tokens.len() != n || rope_pos.len() != n || meta.num_tokens() != n {
        return None;
    }
    for s in &meta.seqs {
        if s.query_len != 1 || s.context_len.div_ceil(bs) > max_blocks || num_splits(1, s.context_len - 1) > split_cap {
            return None;
        }
    }
    let pad = bucket - n;
    let pos = |s: &super::SeqAttention| (s.context_len - 1) as u32;
    let mut p = Packer(Vec::with_capacity(bucket * (max_blocks + 10 + 2 * split_cap) + 2));
    let tokens = p.push(tokens.iter().copied().chain(std::iter::repeat_n(0, pad)));
    let rope_pos = p.push(rope_pos.iter().copied().chain(std::iter::repeat_n(0, pad)));
    let slot_mapping = p.push(meta.slot_mapping.iter().copied().chain(std::iter::repeat_n(PAD_SLOT, pad)));
    let block_tables = p.push(meta.seqs.iter().flat_map(|s| {
        let used = s.context_len.div_ceil(bs);
        s.block_table[..used].iter().copied().chain(std::iter::repeat_n(0, max_blocks - used))
    }).chain(std::iter::repeat_n(0, pad * max_blocks)));
    let query_start = p.push(0..=bucket as u32);
    let context_len = p.push(meta.seqs.iter().map(|s| s.context_len as u32).chain(std::iter::repeat_n(1, pad)));
    let token_seq = p.push(0..bucket as u32);
    let token_pos = p.push(meta.seqs.iter().map(pos).chain(std::iter::repeat_n(0, pad)));
    let token_splits = p.push(meta.seqs.iter().map(|s| num_splits(1, s.context_len - 1) as u32).chain(std::iter::repeat_n(1, pad)));
    let token_part = p.push((0..bucket).map(|t| (t * split_cap) as u32));
    let work_token = p.push((0..bucket * split_cap).map(|w| (w / split_cap) as u32));
    let work_split = p.push((0..bucket * split_cap).map(|w| (w % split_cap) as u32));
    let split_tokens = p.push(0..bucket as u32);
    let empty = Span { start: p.0.len(), len: 0 };
    p.0.push(0);
    Some(StepPlan {
        num_tokens: bucket,
        num_seqs: bucket,
        max_blocks,
        num_work: bucket * split_cap,
        num_short_work: bucket * split_cap,
        num_tiles: 0,
        num_split_tokens: bucket,
        num_partials: bucket * split_cap,
        max_splits: split_cap,
        split_keys: split_min_keys(),
        slot_mapping,
        block_tables,
        query_start,
        context_len,
        token_seq,
        token_pos,
        token_splits,
        token_part,
        work_token,
        work_split,
        split_tokens,
        tile_seq: empty,
        tile_start: empty,
        tokens,
        rope_pos,
        packed: p.0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attention::SeqAttention;

    fn meta(seqs: &[(usize, usize)], bs: usize) -> AttentionMetadata {
        let mut m = AttentionMetadata { slot_mapping: Vec::new(), seqs: Vec::new(), block_size: bs };
        let mut next_block = 0u32;
        for &(q, ctx) in seqs {
            let blocks: Vec<u32> = (0..ctx.div_ceil(bs) as u32).map(|b| next_block + b).collect();
            next_block += blocks.len() as u32;
            let query_start = m.slot_mapping.len();
            for pos in ctx - q..ctx {
                m.slot_mapping.push(blocks[pos / bs] * bs as u32 + (pos % bs) as u32);
            }
            m.seqs.push(SeqAttention { query_start, query_len: q, context_len: ctx, block_table: blocks });
        }
        m
    }

    #[test]
    fn decode_over_a_long_context_is_split_and_prefill_is_not() {
        let m = meta(&[(1, 4096), (40, 40), (1, 1), (2, 130)], 16);
        validate(&m, 1000, 16).unwrap();
        let p = plan(&m);
        let get = |s: Span| &p.packed[s.start..s.start + s.len];
        assert_eq!(p.num_tokens, 44);
        assert_eq!(p.max_blocks, 256);
        // 128 keys per partition: 4096 keys -> 32, 8192 and more -> 64 (the cap), 129 and 130 keys -> 2.
        assert_eq!(SPLIT_MIN_KEYS, 128);
        assert_eq!(get(p.token_splits)[0], 32);
        assert_eq!(num_splits(1, 8191), 64);
        assert!(get(p.token_splits)[1..41].iter().all(|&s| s == 1));
        assert_eq!(get(p.token_splits)[41], 1);
        assert_eq!(&get(p.token_splits)[42..], &[2, 2]);
        assert_eq!(p.num_partials, 36);
        assert_eq!(get(p.split_tokens), &[0, 42, 43]);
        assert_eq!(&get(p.token_part)[42..], &[32, 34]);
        assert_eq!(p.num_work, 32 + 40 + 1 + 4);
        assert_eq!(get(p.token_pos)[41], 0);
        assert_eq!(&get(p.token_pos)[42..], &[128, 129]);
        assert_eq!(get(p.query_start), &[0, 1, 41, 42, 44]);
        // Padded tables: the 40-token sequence uses 3 blocks, the rest of its row is zero.
        let row1 = &get(p.block_tables)[256..512];
        assert_eq!(&row1[..3], &[256, 257, 258]);
        assert!(row1[3..].iter().all(|&b| b == 0));
    }

    #[test]
    fn long_chunks_are_tiled_after_the_short_rows() {
        // A decode, a 130-query chunk continuing 70 cached tokens, a 16-query chunk (not tiled), a
        // 17-query prefill (one partial tile).
        let m = meta(&[(1, 300), (130, 200), (16, 16), (17, 17)], 16);
        validate(&m, 1000, 16).unwrap();
        let p = plan(&m);
        let get = |s: Span| &p.packed[s.start..s.start + s.len];
        assert_eq!(p.num_tokens, 1 + 130 + 16 + 17);
        assert_eq!(p.num_short_work, 3 + 16, "the decode's 3 partitions and the 16-query chunk");
        assert_eq!(p.num_work, p.num_short_work + 130 + 17);
        let work = get(p.work_token);
        assert_eq!(&work[..3], &[0; 3]);
        assert_eq!(&work[3..19], &(131..147).collect::<Vec<u32>>()[..]);
        assert_eq!(&work[19..149], &(1..131).collect::<Vec<u32>>()[..]);
        assert_eq!(&work[149..], &(147..164).collect::<Vec<u32>>()[..]);
        assert!(get(p.work_split)[p.num_short_work..].iter().all(|&z| z == 0));
        // Tiles of 64 queries, the ones seeing the most keys first: (seq 1, 128) sees 200 keys,
        // (1, 64) 198, (1, 0) 134, (3, 0) 17.
        assert_eq!(p.num_tiles, 4);
        assert_eq!(get(p.tile_seq), &[1, 1, 1, 3]);
        assert_eq!(get(p.tile_start), &[128, 64, 0, 0]);
        assert!(!is_tiled(SPLIT_MAX_QUERY_LEN) && is_tiled(SPLIT_MAX_QUERY_LEN + 1));
    }

    #[test]
    fn fixed_decode_plans_keep_their_layout_and_the_per_token_splits() {
        let m = meta(&[(1, 300), (1, 5)], 16);
        validate(&m, 1000, 16).unwrap();
        let key = FixedDecodeKey::for_step(2, 300, 4, 64, 16).unwrap();
        assert_eq!(key.split_cap, 4, "300 keys need 3 partitions of 128, rounded up to 4");
        assert_eq!(key.max_blocks, 32, "19 blocks, rounded up to 32");
        let p = plan_fixed_decode(&m, &[11, 12], &[299, 4], key).unwrap();
        let get = |s: Span| &p.packed[s.start..s.start + s.len];
        assert_eq!(get(p.tokens), &[11, 12, 0, 0]);
        assert_eq!(&get(p.slot_mapping)[2..], &[PAD_SLOT, PAD_SLOT]);
        assert_eq!(get(p.token_splits), &[3, 1, 1, 1]);
        assert_eq!(get(p.token_pos), &[299, 4, 0, 0]);
        assert_eq!(get(p.block_tables).len(), 4 * 32);
        assert_eq!(p.packed.len(), key.packed_len());
        assert_eq!(p.num_work, 16);
        assert_eq!(&get(p.work_token)[..5], &[0, 0, 0, 0, 1]);
        assert_eq!(&get(p.work_split)[..5], &[0, 1, 2, 3, 0]);
        assert_eq!(get(p.token_part), &[0, 4, 8, 12]);
        // Another step with the same key has every span at the same offset (what a graph replays).
        let m2 = meta(&[(1, 17)], 16);
        let p2 = plan_fixed_decode(&m2, &[5], &[0], key).unwrap();
        assert_eq!((p2.tokens, p2.slot_mapping, p2.block_tables, p2.work_split, p2.split_tokens), (p.tokens, p.slot_mapping, p.block_tables, p.work_split, p.split_tokens));
        assert_eq!(p2.packed.len(), p.packed.len());
        // Steps that do not fit are refused.
        assert!(plan_fixed_decode(&meta(&[(2, 20)], 16), &[1], &[0], key).is_none(), "not a decode step");
        assert!(plan_fixed_decode(&meta(&[(1, 600)], 16), &[1], &[0], key).is_none(), "more partitions than the cap");
        assert!(plan_fixed_decode(&meta(&[(1, 513)], 16), &[1], &[0], FixedDecodeKey { split_cap: 16, ..key }).is_none(), "wider than the table");
        assert!(FixedDecodeKey::for_step(5, 10, 4, 64, 16).is_none(), "batch over the bucket");
        assert!(FixedDecodeKey::for_step(1, 64 * 16 + 1, 4, 64, 16).is_none(), "context over the table width");
    }

    #[test]
    fn malformed_steps_are_rejected() {
        let m = meta(&[(3, 20)], 16);
        assert!(validate(&m, 2, 16).is_ok());
        assert!(validate(&m, 1, 16).is_err(), "block outside the cache");
        assert!(validate(&m, 2, 8).is_err(), "block size mismatch");
        let mut gap = m.clone();
        gap.seqs[0].query_start = 1;
        assert!(validate(&gap, 2, 16).is_err());
        let mut short = m.clone();
        short.seqs[0].block_table.pop();
        assert!(validate(&short, 2, 16).is_err());
        let mut too_many = m.clone();
        too_many.seqs[0].query_len = 21;
        assert!(validate(&too_many, 2, 16).is_err());
        let mut slot = m;
        slot.slot_mapping[0] = 32;
        assert!(validate(&slot, 2, 16).is_err());
    }

    #[test]
    fn layers_split_the_keys_they_attend() {
        // A full layer keeps the plan's partitions exactly (so its results do not change with windows).
        for n in 1..5000 {
            let splits = num_splits(1, n - 1);
            assert_eq!(layer_partitions(splits, n, 0, SPLIT_MIN_KEYS), (splits, n.div_ceil(splits)), "{n} keys");
        }
        // A sliding layer splits its window alone: 4096 of 8192 keys in 64 partitions of 64, 100 in 2 of
        // 50, 1 in 1; every live partition holds keys.
        assert_eq!(layer_partitions(64, 8192, 8192 - 4096, 64), (64, 64));
        assert_eq!(layer_partitions(64, 8192, 8092, 64), (2, 50));
        assert_eq!(layer_partitions(64, 8192, 8191, 64), (1, 1));
        assert_eq!(layer_partitions(64, 100_000, 100_000 - 4096, 64), (64, 64));
        for (splits, n, lo) in [(64, 8192, 8000), (3, 130, 1), (47, 3000, 2900), (64, 5000, 4488)] {
            let (live, per) = layer_partitions(splits, n, lo, 64);
            assert!(live <= splits && lo + (live - 1) * per < n && lo + live * per >= n);
        }
    }

    #[test]
    fn head_groups_divide_the_gqa_group() {
        // (heads, kv_heads) -> heads per block: Llama-3-8B, Qwen2.5-1.5B, SmolLM2-135M, MHA, a group of 16
        // (two blocks per KV head), a prime group past the cap (one head per block).
        for (h, kvh, want) in [(32, 8, 4), (12, 2, 6), (9, 3, 3), (32, 32, 1), (64, 4, 8), (64, 8, 8), (44, 4, 1), (40, 8, 5)] {
            let g = heads_per_block(h, kvh);
            assert_eq!(g, want, "{h} heads over {kvh} KV heads");
            assert!(g <= ATTN_MAX_GROUP && (h / kvh) % g == 0);
        }
    }

    #[test]
    fn splits_are_capped_and_need_short_queries() {
        assert_eq!(num_splits(1, 0), 1);
        assert_eq!(num_splits(1, SPLIT_MIN_KEYS - 1), 1);
        assert_eq!(num_splits(1, SPLIT_MIN_KEYS), 2);
        assert_eq!(num_splits(SPLIT_MAX_QUERY_LEN + 1, 100_000), 1);
        assert_eq!(num_splits(1, 1 << 20), ATTN_MAX_SPLITS);
    }
}
