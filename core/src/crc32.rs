//! CRC-32 (IEEE 802.3, reflected, polynomial 0xEDB88320): the checksum of the gzip trailer and of spool chunks.
//!
//! `crc32fast` computes it: carry-less multiplication (PCLMULQDQ) on x86_64 and the CRC instructions on aarch64,
//! both detected at run time, else slice-by-16 tables. It replaced our slice-by-8, which was 8 % of kedge-send's
//! CPU on the 57 MB test file: README "Benchmarks" has the table (`cargo bench --bench throughput -- gzip` prints
//! the CPU per MB). The crate was already linked (by the test endpoint's flate2); no allocation.

/// A running CRC-32; `update` can be called with any split of the input.
#[derive(Clone, Debug, Default)]
pub struct Crc32(crc32fast::Hasher);

impl Crc32 {
    /// A fresh checksum (of the empty input).
    pub fn new() -> Self {
        Crc32(crc32fast::Hasher::new())
    }

    /// Feeds more bytes.
    pub fn update(&mut self, data: &[u8]) {
        self.0.update(data);
    }

    /// The checksum of everything fed so far.
    pub fn finish(&self) -> u32 {
        self.0.clone().finalize()
    }
}

/// CRC-32 of one buffer.
pub fn crc32(data: &[u8]) -> u32 {
    crc32fast::hash(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A bit at a time, straight from the polynomial: the reference the fast paths are checked against.
    fn update_bytewise(mut c: u32, data: &[u8]) -> u32 {
        for &b in data {
            c ^= u32::from(b);
            for _ in 0..8 {
                c = if c & 1 != 0 {
                    0xEDB8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
            }
        }
        c
    }

    #[test]
    fn matches_the_standard_check_value() {
        // The check value every CRC-32/ISO-HDLC implementation agrees on.
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b""), 0);
    }

    #[test]
    fn split_input_gives_the_same_checksum() {
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 7 + 3) as u8).collect();
        let mut c = Crc32::new();
        for part in data.chunks(37) {
            c.update(part);
        }
        assert_eq!(c.finish(), crc32(&data));
    }

    #[test]
    fn matches_known_vectors() {
        // CRC-32/ISO-HDLC values as zlib's crc32() and Python's zlib.crc32 give them.
        let cases: [(&[u8], u32); 6] = [
            (b"a", 0xE8B7_BE43),
            (b"abc", 0x3524_41C2),
            (b"message digest", 0x2015_9D7F),
            (b"abcdefghijklmnopqrstuvwxyz", 0x4C27_50BD),
            (b"The quick brown fox jumps over the lazy dog", 0x414F_A339),
            (&[0u8; 32], 0x190A_55AD),
        ];
        for (data, want) in cases {
            assert_eq!(crc32(data), want, "{:?}", String::from_utf8_lossy(data));
        }
    }

    #[test]
    fn the_fast_paths_match_bit_at_a_time_on_random_data_at_every_alignment_and_split() {
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let data: Vec<u8> = (0..70_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        for start in 0..16 {
            for len in [0, 1, 7, 8, 9, 15, 16, 17, 63, 1000, 65_537] {
                let part = &data[start..start + len];
                assert_eq!(
                    crc32(part),
                    update_bytewise(0xFFFF_FFFF, part) ^ 0xFFFF_FFFF,
                    "start {start}, len {len}"
                );
            }
        }
        for split in [1usize, 3, 8, 13, 4096] {
            let mut c = Crc32::new();
            for p in data.chunks(split) {
                c.update(p);
            }
            assert_eq!(
                c.finish(),
                update_bytewise(0xFFFF_FFFF, &data) ^ 0xFFFF_FFFF
            );
        }
    }
}
