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
    ///
    /// The prefix's 0–3 left-over bytes and the key's bytes are fed through a 64-bit
    /// shift register, a 4-byte block at a time, so that a prefix whose length is not a
    /// multiple of 4 costs no byte-by-byte realignment.
    #[inline]
    pub(crate) fn hash(&self, key: &[u8]) -> u32 {
        let total_len = self.len.wrapping_add(key.len() as u32);
        let mut h = self.h;
        // Pending bytes, little-endian: `bits` of them (0, 8, 16 or 24) in `acc`.
        let mut acc = u64::from(self.tail);
        let bits = self.tail_len * 8;
        let mut rest = key;
        while let Some((b, more)) = rest.split_first_chunk::<4>() {
            acc |= u64::from(u32::from_le_bytes(*b)) << bits;
            h = mix_h(h, acc as u32);
            acc >>= 32;
            rest = more;
        }
        let last = match rest.len() {
            0 => 0,
            1 => u32::from(rest[0]),
            2 => u32::from(rest[0]) | u32::from(rest[1]) << 8,
            _ => u32::from(rest[0]) | u32::from(rest[1]) << 8 | u32::from(rest[2]) << 16,
        };
        acc |= u64::from(last) << bits;
        let mut pending = bits + 8 * rest.len() as u32;
        if pending >= 32 {
            h = mix_h(h, acc as u32);
            acc >>= 32;
            pending -= 32;
        }
        if pending != 0 {
            h ^= mix_k(acc as u32);
        }
        fmix(h ^ total_len)
    }
}

/// `murmur3_x86_32(bytes, seed 0)`, in one piece (the reference the tests compare with).
#[cfg(test)]
pub(crate) fn murmur3_x86_32(bytes: &[u8]) -> u32 {
    Prefix::new(bytes).hash(&[])
}
