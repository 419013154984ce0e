//! gzip (RFC 1952) around miniz_oxide's raw deflate, into a caller's fixed buffer.
//!
//! The compressor's state is allocated once per client and reset between chunks, and the output goes into a buffer
//! sized by [`compressed_bound`] when the client is created: compressing never allocates.

use miniz_oxide::deflate::core::{
    compress, create_comp_flags_from_zip_params, CompressorOxide, TDEFLFlush, TDEFLStatus,
};

use crate::crc32::Crc32;
use crate::error::{Error, ErrorKind};

/// Heap held by one compressor (hash chains, dictionary, Huffman tables), measured with a counting allocator
/// (`tests/memory.rs`) and rounded up.
pub const COMPRESSOR_STATE_BYTES: usize = 352 * 1024;

const HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];
const TRAILER_LEN: usize = 8;

/// Inputs shorter than this are stored, not deflated: resetting the compressor zeroes about 300 KiB of tables,
/// which for one ~100-byte record (one request per record with `batch.max_age_ms=0`) costs more than deflating
/// it, and saves some 10-20 bytes on a request whose HTTP head alone is hundreds.
pub const STORE_BELOW: usize = 128;

/// Room for the gzip member of `raw_len` input bytes. Deflate can expand input that does not compress (random
/// bytes, already compressed data); when it would not fit here, [`Gzip::compress`] stores the input instead, in
/// blocks of at most 64 KiB with 5 bytes of header each, which always fits. So a chunk on the wire or in the spool
/// is never much larger than its raw data.
pub const fn compressed_bound(raw_len: usize) -> usize {
    raw_len + (raw_len / 16384 + 1) * 5 + HEADER.len() + TRAILER_LEN + 64
}

type CompressFn =
    fn(&mut CompressorOxide, &[u8], &mut [u8], TDEFLFlush) -> (TDEFLStatus, usize, usize);

/// A reusable gzip compressor.
pub struct Gzip {
    state: Box<CompressorOxide>,
    level: u8,
}

impl Gzip {
    /// Allocates the compressor's state once. `level` is 1 (fastest) to 9 (smallest); 0 stores.
    pub fn new(level: u8) -> Self {
        let flags = create_comp_flags_from_zip_params(level.min(9) as i32, -15, 0);
        Gzip {
            state: Box::new(CompressorOxide::new(flags)),
            level: level.min(9),
        }
    }

    /// The configured level.
    pub fn level(&self) -> u8 {
        self.level
    }

    /// Compresses `input` as one gzip member into `out` (cleared first, never grown past its capacity).
    /// Returns the length written. Fails, without panicking, if `out` is smaller than [`compressed_bound`].
    pub fn compress(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<usize, Error> {
        if input.len() < STORE_BELOW {
            return store_small(input, out);
        }
        let mut result = self.compress_into(input, out);
        if result.is_err() {
            // Input that deflate expands: store it instead, which fits any buffer of compressed_bound size.
            self.state.set_compression_level_raw(0);
            result = self.compress_into(input, out);
            self.state.set_compression_level_raw(self.level);
        }
        if result.is_err() {
            out.clear();
        }
        result
    }

    /// The gzip member in `out`, whose length grows (within its capacity) as the output needs it: zeroing the whole
    /// capacity before every chunk cost 4 % of the compressor's time, and telemetry compresses to about 8 %.
    fn compress_into(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<usize, Error> {
        let too_small = || {
            Error::new(
                ErrorKind::Internal,
                "gzip output buffer too small for this chunk",
            )
        };
        let cap = out.capacity();
        if cap < HEADER.len() + TRAILER_LEN {
            return Err(too_small());
        }
        self.state.reset();
        out.clear();
        // A first guess of a quarter of the input; growing within capacity does not allocate.
        zero_extend(
            out,
            cap.min(HEADER.len() + TRAILER_LEN + 4096 + input.len() / 4),
        );
        out[..HEADER.len()].copy_from_slice(&HEADER);
        let mut pos = HEADER.len();
        let mut consumed = 0;
        // Through a pointer the optimiser cannot see through: LTO would otherwise inline the compressor into this
        // function, which is built for size (opt-level "z"), and lose the opt-level 3 its crate is built with
        // (Cargo.toml). Measured in README "Benchmarks" (where the pipeline's CPU goes).
        let compress: CompressFn = std::hint::black_box(compress as CompressFn);
        loop {
            let body_end = out.len() - TRAILER_LEN;
            let (status, n_in, n_out) = compress(
                &mut self.state,
                &input[consumed..],
                &mut out[pos..body_end],
                TDEFLFlush::Finish,
            );
            consumed += n_in;
            pos += n_out;
            match status {
                TDEFLStatus::Done => break,
                TDEFLStatus::Okay if pos < body_end => continue,
                TDEFLStatus::Okay if out.len() < cap => {
                    let grown = cap.min(out.len() * 2);
                    zero_extend(out, grown);
                }
                TDEFLStatus::Okay => return Err(too_small()),
                _ => return Err(Error::new(ErrorKind::Internal, "deflate failed")),
            }
        }
        let mut crc = Crc32::new();
        crc.update(input);
        out.truncate(pos);
        out.extend_from_slice(&crc.finish().to_le_bytes());
        out.extend_from_slice(&(input.len() as u32).to_le_bytes());
        Ok(pos + TRAILER_LEN)
    }
}

/// A gzip member of one stored deflate block (RFC 1951 3.2.4: BFINAL=1, BTYPE=00, then LEN and its complement),
/// without touching the compressor. `input` is under [`STORE_BELOW`] bytes, so it fits any `compressed_bound`.
fn store_small(input: &[u8], out: &mut Vec<u8>) -> Result<usize, Error> {
    debug_assert!(input.len() < STORE_BELOW);
    let len = HEADER.len() + 5 + input.len() + TRAILER_LEN;
    out.clear();
    if out.capacity() < len {
        return Err(Error::new(
            ErrorKind::Internal,
            "gzip output buffer too small for this chunk",
        ));
    }
    let n = input.len() as u16;
    let mut crc = Crc32::new();
    crc.update(input);
    out.extend_from_slice(&HEADER);
    out.push(1);
    out.extend_from_slice(&n.to_le_bytes());
    out.extend_from_slice(&(!n).to_le_bytes());
    out.extend_from_slice(input);
    out.extend_from_slice(&crc.finish().to_le_bytes());
    out.extend_from_slice(&(input.len() as u32).to_le_bytes());
    Ok(len)
}

/// `out.resize(len, 0)` as copies of a zeroed block: at opt-level "z" `resize` fills one byte per step, which was
/// 4 % of the compressor's instructions (a quarter of every chunk's size zeroed); `extend_from_slice` is a
/// `memcpy`. Never beyond the capacity the caller reserved (`len` is within it), so it does not allocate.
fn zero_extend(out: &mut Vec<u8>, len: usize) {
    const ZEROS: [u8; 512] = [0; 512];
    debug_assert!(len <= out.capacity());
    while out.len() < len {
        let n = (len - out.len()).min(ZEROS.len());
        out.extend_from_slice(&ZEROS[..n]);
    }
}

/// Decompresses one gzip member, checking header, CRC-32 and length: used by tests and by the spool's self-checks.
pub fn decompress(data: &[u8], limit: usize) -> Result<Vec<u8>, Error> {
    let bad = |why: &str| {
        Error::new(
            ErrorKind::InvalidRecord,
            format!("not a valid gzip body: {why}"),
        )
    };
    if data.len() < HEADER.len() + TRAILER_LEN || data[0] != 0x1f || data[1] != 0x8b || data[2] != 8
    {
        return Err(bad("bad header"));
    }
    if data[3] != 0 {
        return Err(bad("header flags are not supported"));
    }
    let body = &data[HEADER.len()..data.len() - TRAILER_LEN];
    let raw = miniz_oxide::inflate::decompress_to_vec_with_limit(body, limit)
        .map_err(|_| bad("deflate stream"))?;
    let t = &data[data.len() - TRAILER_LEN..];
    let crc = u32::from_le_bytes([t[0], t[1], t[2], t[3]]);
    let len = u32::from_le_bytes([t[4], t[5], t[6], t[7]]);
    if crate::crc32::crc32(&raw) != crc || raw.len() as u32 != len {
        return Err(bad("checksum or length mismatch"));
    }
    Ok(raw)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pseudo_random(n: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    #[test]
    fn round_trips_text_and_is_smaller() {
        let text: Vec<u8> = (0..5000)
            .flat_map(|i| format!("{{\"t\":{i},\"v\":21.5}}\n").into_bytes())
            .collect();
        let mut g = Gzip::new(3);
        let mut out = Vec::with_capacity(compressed_bound(text.len()));
        let n = g.compress(&text, &mut out).unwrap();
        assert!(n < text.len() / 4, "{n} vs {}", text.len());
        assert_eq!(decompress(&out, usize::MAX).unwrap(), text);
        // Reuse gives identical output: the state is fully reset.
        let first = out.clone();
        g.compress(&text, &mut out).unwrap();
        assert_eq!(out, first);
    }

    #[test]
    fn incompressible_input_fits_the_bound_at_every_size_without_growing_the_buffer() {
        let mut g = Gzip::new(1);
        for (i, n) in [
            0usize,
            1,
            100,
            16383,
            16384,
            65536,
            100_000,
            1 << 20,
            4 << 20,
        ]
        .into_iter()
        .enumerate()
        {
            let data = pseudo_random(n, i as u64 + 7);
            let cap = compressed_bound(n);
            let mut out = Vec::with_capacity(cap);
            let ptr = out.as_ptr();
            let len = g
                .compress(&data, &mut out)
                .unwrap_or_else(|e| panic!("size {n}: {e}"));
            assert!(len <= cap);
            assert_eq!(out.as_ptr(), ptr, "output buffer was reallocated");
            assert_eq!(decompress(&out, usize::MAX).unwrap(), data);
        }
    }

    #[test]
    fn small_inputs_are_stored_without_the_compressor_and_round_trip_at_every_length() {
        let mut g = Gzip::new(3);
        let record = "{\"seq\":1,\"device\":\"gw-1\",\"site\":\"plant-7\",\"temp\":21.3,\"status\":\"ok\"}\n";
        let text = record.repeat(3);
        let text = text.as_bytes();
        assert!(text.len() > STORE_BELOW);
        for len in 0..=STORE_BELOW + 1 {
            let input = &text[..len];
            let mut out = Vec::with_capacity(compressed_bound(len));
            let n = g.compress(input, &mut out).unwrap();
            assert_eq!(n, out.len());
            assert_eq!(decompress(&out, 1 << 20).unwrap(), input, "length {len}");
            if len < STORE_BELOW {
                // Header, the block's 5 bytes, the input itself, the trailer.
                assert_eq!(n, 10 + 5 + len + 8, "length {len} is stored");
                assert_eq!(&out[15..15 + len], input);
            } else {
                assert!(n < 10 + 5 + len + 8, "length {len} is deflated");
            }
            // The compressor is unharmed for the next, longer input.
            let mut big = Vec::with_capacity(compressed_bound(text.len()));
            g.compress(text, &mut big).unwrap();
            assert_eq!(decompress(&big, 1 << 20).unwrap(), text);
        }
        // A buffer too small for the stored member is an error, not a panic.
        let mut tiny = Vec::with_capacity(20);
        assert!(g.compress(b"0123456789", &mut tiny).is_err());
        assert!(tiny.is_empty());
    }

    #[test]
    fn too_small_buffer_is_an_error_not_a_panic() {
        let mut g = Gzip::new(6);
        let data = pseudo_random(10_000, 3);
        let mut out = Vec::with_capacity(100);
        assert_eq!(
            g.compress(&data, &mut out).unwrap_err().kind,
            ErrorKind::Internal
        );
        let mut tiny = Vec::new();
        assert!(g.compress(b"x", &mut tiny).is_err());
    }

    #[test]
    fn decompress_detects_corruption() {
        let mut g = Gzip::new(3);
        let mut out = Vec::with_capacity(compressed_bound(100));
        g.compress(&[b'a'; 100], &mut out).unwrap();
        let mut bad = out.clone();
        let last = bad.len() - 5;
        bad[last] ^= 1;
        assert!(decompress(&bad, usize::MAX).is_err());
        assert!(decompress(&out[..out.len() - 1], usize::MAX).is_err());
    }
}
