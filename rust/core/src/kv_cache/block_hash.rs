//! Content address of a full KV block: its token ids and, through the parent hash, every token
//! before it.

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
    /// `parent` is the hash of the previous block of the same sequence, `None` for the first block.
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
        let digest = Sha256::digest(&bytes);
        let mut head = [0u8; 16];
        head.copy_from_slice(&digest[..16]);
        BlockHash(u128::from_le_bytes(head))
    }
}
