//! Content address of a full KV block: its token ids and, through the parent hash, every token
//! before it and the regime the whole chain was computed in.

use sha2::{Digest, Sha256};

/// Identity of a full block for the prefix cache: SHA-256 over (parent block's hash, the block's
/// token ids), truncated to 128 bits.
///
/// The chain matters because a block's K and V depend on every earlier token, not only its own: two
/// blocks are interchangeable only if their whole prefixes are equal.
///
/// Blocks are matched by hash alone, without keeping and comparing their tokens, so a collision would
/// let one request read another prefix's KV. At 128 bits the chance that any two of `n` hashed blocks
/// collide is about `n² / 2¹²⁹`: for 2⁴⁰ blocks (far more than a server computes in its lifetime) that
/// is 2⁻⁴⁹, well below the rate of undetected hardware memory errors. A cryptographic hash rather
/// than a fast one because prompts come from many users: nobody can craft a prompt whose blocks
/// collide with another user's to read or poison their cached KV.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlockHash(u128);

impl BlockHash {
    /// `parent` is the hash of the previous block of the same sequence; for the first block it is
    /// the regime's [`KvRegime::first_parent`] (`None` in the base regime).
    pub fn new(parent: Option<BlockHash>, tokens: &[u32]) -> Self {
        // A tag byte keeps the encoding prefix-free, so a first block can never be mistaken for a
        // later one. Blocks of one pool all have `block_size` tokens, so no length is needed.
        let mut bytes = Vec::with_capacity(17 + 4 * tokens.len());
        match parent {
            None => bytes.push(0u8),
            Some(p) => {
                bytes.push(1u8);
                bytes.extend_from_slice(&p.0.to_le_bytes());
            }
        }
        for t in tokens {
            bytes.extend_from_slice(&t.to_le_bytes());
        }
        Self::digest(&bytes)
    }

    /// The low 64 bits, as KV events report a block (routers compare hashes only with each other).
    pub fn external(self) -> u64 {
        self.0 as u64
    }

    fn digest(bytes: &[u8]) -> Self {
        let digest = Sha256::digest(bytes);
        let mut head = [0u8; 16];
        head.copy_from_slice(&digest[..16]);
        BlockHash(u128::from_le_bytes(head))
    }
}

/// How a sequence's KV was computed beyond its tokens. KV of two regimes is never interchangeable
/// (the same token at the same position has different K), so each regime starts its own hash
/// chain and the prefix cache only matches blocks within one regime.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum KvRegime {
    /// The only regime of most models. Its chain is the plain one (the first block has no parent):
    /// these hashes never change when other regimes are added.
    #[default]
    Base,
    /// Rotary embeddings with the long factors of Phi-3's longrope, for sequences longer than the
    /// original context.
    LongRope,
}

impl KvRegime {
    /// The parent hash of a sequence's first block: none for [`KvRegime::Base`], a fixed seed
    /// otherwise. A seed is the digest of a label that starts with neither tag byte of a block's
    /// encoding, so it is no block's hash (short of a SHA-256 collision).
    pub fn first_parent(self) -> Option<BlockHash> {
        match self {
            KvRegime::Base => None,
            KvRegime::LongRope => Some(BlockHash::digest(b"mlc_llm KV regime: long rope")),
        }
    }
}
