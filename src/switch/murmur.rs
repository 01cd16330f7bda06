//! MurmurHash3 x86 32-bit, seed 0, over "switch name ++ key" — with the name's part
//! computed once per switch, so an evaluation hashes only the key's bytes.

const C1: u32 = 0xcc9e_2d51;
const C2: u32 = 0x1b87_3593;

#[inline(always)]
fn mix_k(k: u32) -> u32 {
    k.wrapping_mul(C1).rotate_left(15).wrapping_mul(C2)
}

#[inline(always)]
fn mix_h(h: u32, k: u32) -> u32 {
    (h ^ mix_k(k))
        .rotate_left(13)
        .wrapping_mul(5)
        .wrapping_add(0xe654_6b64)
}

#[inline(always)]
fn fmix(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

/// The hash state after a prefix (the switch's name): the blocks already mixed, the
/// 0–3 bytes left over, and the prefix's length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Prefix {
    h: u32,
    /// Left-over bytes, little-endian in the low `tail_len * 8` bits.
    tail: u32,
    tail_len: u32,
    len: u32,
}

impl Prefix {
    pub(crate) fn new(prefix: &[u8]) -> Prefix {
        let mut h = 0u32; // seed 0
        let mut blocks = prefix.chunks_exact(4);
        for b in &mut blocks {
            h = mix_h(h, u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
        }
        let rest = blocks.remainder();
        let mut tail = 0u32;
        for (i, &byte) in rest.iter().enumerate() {
            tail |= u32::from(byte) << (8 * i);
        }
        Prefix {
            h,
            tail,
            tail_len: rest.len() as u32,
            len: prefix.len() as u32,
        }
    }

    /// `murmur3_x86_32(prefix ++ key, 0)`.
    #[inline]
    pub(crate) fn hash(&self, key: &[u8]) -> u32 {
        let total_len = self.len.wrapping_add(key.len() as u32);
        let mut h = self.h;
        let mut tail = self.tail;
        let mut tail_len = self.tail_len as usize;
        let mut key = key;
        if tail_len != 0 {
            // Top the prefix's left-over bytes up to a block with the key's first bytes.
            let take = (4 - tail_len).min(key.len());
            for (i, &byte) in key[..take].iter().enumerate() {
                tail |= u32::from(byte) << (8 * (tail_len + i));
            }
            tail_len += take;
            key = &key[take..];
            if tail_len == 4 {
                h = mix_h(h, tail);
                tail = 0;
                tail_len = 0;
            }
        }
        let mut blocks = key.chunks_exact(4);
        for b in &mut blocks {
            h = mix_h(h, u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
        }
        for (i, &byte) in blocks.remainder().iter().enumerate() {
            tail |= u32::from(byte) << (8 * (tail_len + i));
        }
        tail_len += blocks.remainder().len();
        if tail_len != 0 {
            h ^= mix_k(tail);
        }
        fmix(h ^ total_len)
    }
}

/// `murmur3_x86_32(bytes, seed 0)`, in one piece (the reference the tests compare with).
#[cfg(test)]
pub(crate) fn murmur3_x86_32(bytes: &[u8]) -> u32 {
    Prefix::new(bytes).hash(&[])
}
