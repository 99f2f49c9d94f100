//! SHA-256 whose running state can be saved and restored, so that an interrupted install can
//! resume hashing the signed part of the payload without re-downloading it. The compression
//! function is the `sha2` crate's; this only keeps the Merkle–Damgård bookkeeping.

use serde::{Deserialize, Serialize};
use sha2::digest::consts::U64;
use sha2::digest::generic_array::GenericArray;

const IV: [u32; 8] = [
    0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
];

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResumableSha256 {
    state: [u32; 8],
    /// Bytes hashed so far.
    len: u64,
    /// Bytes not yet forming a full 64-byte block.
    #[serde(with = "hex_bytes")]
    pending: Vec<u8>,
}

impl Default for ResumableSha256 {
    fn default() -> Self {
        Self::new()
    }
}

impl ResumableSha256 {
    pub fn new() -> Self {
        ResumableSha256 {
            state: IV,
            len: 0,
            pending: Vec::with_capacity(64),
        }
    }

    pub fn bytes_hashed(&self) -> u64 {
        self.len
    }

    pub fn update(&mut self, mut data: &[u8]) {
        self.len += data.len() as u64;
        if !self.pending.is_empty() {
            let take = (64 - self.pending.len()).min(data.len());
            self.pending.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.pending.len() < 64 {
                return;
            }
            let block = GenericArray::clone_from_slice(&self.pending);
            sha2::compress256(&mut self.state, &[block]);
            self.pending.clear();
        }
        let (blocks, rest) = data.as_chunks::<64>();
        // Copy groups of blocks into GenericArrays (cheap next to hashing) for compress256.
        let mut group = [GenericArray::<u8, U64>::default(); 64];
        for chunk in blocks.chunks(64) {
            for (dst, src) in group.iter_mut().zip(chunk) {
                dst.copy_from_slice(src);
            }
            sha2::compress256(&mut self.state, &group[..chunk.len()]);
        }
        self.pending.extend_from_slice(rest);
    }

    pub fn finalize(&self) -> [u8; 32] {
        let mut state = self.state;
        let mut tail = self.pending.clone();
        tail.push(0x80);
        while tail.len() % 64 != 56 {
            tail.push(0);
        }
        tail.extend_from_slice(&(self.len.wrapping_mul(8)).to_be_bytes());
        for block in tail.chunks_exact(64) {
            sha2::compress256(&mut state, &[GenericArray::clone_from_slice(block)]);
        }
        let mut out = [0u8; 32];
        for (chunk, word) in out.chunks_exact_mut(4).zip(state) {
            chunk.copy_from_slice(&word.to_be_bytes());
        }
        out
    }
}

mod hex_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        let bytes = hex::decode(text).map_err(serde::de::Error::custom)?;
        if bytes.len() >= 64 {
            return Err(serde::de::Error::custom(
                "pending SHA-256 bytes must be < 64",
            ));
        }
        Ok(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};

    #[test]
    fn matches_sha2_for_all_split_points() {
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 7 + 3) as u8).collect();
        for len in [0usize, 1, 55, 56, 63, 64, 65, 119, 128, 999, 1000] {
            let want: [u8; 32] = Sha256::digest(&data[..len]).into();
            for split in [0, 1, 17, 64, len / 2, len] {
                let split = split.min(len);
                let mut h = ResumableSha256::new();
                h.update(&data[..split]);
                let json = serde_json::to_string(&h).unwrap();
                let mut h: ResumableSha256 = serde_json::from_str(&json).unwrap();
                h.update(&data[split..len]);
                assert_eq!(h.finalize(), want, "len {len} split {split}");
            }
        }
    }
}
