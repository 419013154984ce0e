//! gzip (RFC 1952) decoding with a hard output cap, and an encoder for tests.
//!
//! The service refuses a body whose gzip framing is wrong, so we check everything a strict
//! decoder would: magic, method, reserved flags, header fields, CRC32 and ISIZE of every member,
//! nothing after the last member. The member framing is read here; the deflate data is inflated
//! by `flate2` (zlib-rs backend) and the checksums come from `crc32fast`, so this endpoint shares
//! no compression code with the library it tests. Inflation is streamed into a capped buffer so a
//! "zip bomb" costs at most `cap + 64 KiB`.

use std::io::Write;

use flate2::{Compression, Decompress, FlushDecompress, Status};

/// Why a gzip body was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GzipError {
    /// The inflated data would exceed the cap.
    TooLarge,
    /// Anything else: framing, checksum, truncation. The string says what.
    Bad(String),
}

const FTEXT_FHCRC: u8 = 0x02;
const FEXTRA: u8 = 0x04;
const FNAME: u8 = 0x08;
const FCOMMENT: u8 = 0x10;
const FRESERVED: u8 = 0xe0;

fn bad(msg: impl Into<String>) -> GzipError {
    GzipError::Bad(msg.into())
}

/// CRC-32 (IEEE 802.3, as gzip uses it), by `crc32fast`.
pub fn crc32(data: &[u8]) -> u32 {
    crc32fast::hash(data)
}

/// Length of the member header starting at `data[0]`.
fn header_len(data: &[u8]) -> Result<usize, GzipError> {
    if data.len() < 10 {
        return Err(bad("gzip header truncated"));
    }
    if data[0] != 0x1f || data[1] != 0x8b {
        return Err(bad("not gzip: bad magic bytes"));
    }
    if data[2] != 8 {
        return Err(bad(format!(
            "gzip compression method {} is not deflate",
            data[2]
        )));
    }
    let flags = data[3];
    if flags & FRESERVED != 0 {
        return Err(bad("gzip header has reserved flag bits set"));
    }
    let mut pos = 10;
    if flags & FEXTRA != 0 {
        if data.len() < pos + 2 {
            return Err(bad("gzip FEXTRA truncated"));
        }
        let xlen = u16::from_le_bytes([data[pos], data[pos + 1]]) as usize;
        pos += 2 + xlen;
        if data.len() < pos {
            return Err(bad("gzip FEXTRA truncated"));
        }
    }
    for flag in [FNAME, FCOMMENT] {
        if flags & flag != 0 {
            match data[pos..].iter().position(|&b| b == 0) {
                Some(n) => pos += n + 1,
                None => return Err(bad("gzip name/comment not terminated")),
            }
        }
    }
    if flags & FTEXT_FHCRC != 0 {
        if data.len() < pos + 2 {
            return Err(bad("gzip FHCRC truncated"));
        }
        let want = u16::from_le_bytes([data[pos], data[pos + 1]]);
        if (crc32(&data[..pos]) & 0xffff) as u16 != want {
            return Err(bad("gzip header CRC16 mismatch"));
        }
        pos += 2;
    }
    Ok(pos)
}

/// Inflate a whole gzip body (one or more members) into at most `cap` bytes.
pub fn gunzip(data: &[u8], cap: usize) -> Result<Vec<u8>, GzipError> {
    let mut out = Vec::new();
    let mut pos = 0;
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        pos += header_len(&data[pos..])?;
        let member_start = out.len();
        // Raw deflate: the gzip framing around it is ours to check.
        let mut inflater = Decompress::new(false);
        loop {
            let (in_before, out_before) = (inflater.total_in(), inflater.total_out());
            let status = inflater
                .decompress(&data[pos..], &mut chunk, FlushDecompress::None)
                .map_err(|e| bad(format!("gzip deflate data corrupt ({e})")))?;
            let consumed = (inflater.total_in() - in_before) as usize;
            let written = (inflater.total_out() - out_before) as usize;
            pos += consumed;
            if out.len().saturating_add(written) > cap {
                return Err(GzipError::TooLarge);
            }
            out.extend_from_slice(&chunk[..written]);
            match status {
                Status::StreamEnd => break,
                Status::Ok | Status::BufError => {
                    if consumed == 0 && written == 0 {
                        return Err(bad("gzip deflate stream truncated"));
                    }
                }
            }
        }
        if data.len() < pos + 8 {
            return Err(bad("gzip trailer truncated"));
        }
        let crc = u32::from_le_bytes([data[pos], data[pos + 1], data[pos + 2], data[pos + 3]]);
        let isize =
            u32::from_le_bytes([data[pos + 4], data[pos + 5], data[pos + 6], data[pos + 7]]);
        pos += 8;
        let member = &out[member_start..];
        if crc32(member) != crc {
            return Err(bad("gzip CRC32 mismatch"));
        }
        // ISIZE is the length modulo 2^32 (RFC 1952 section 2.3.1).
        if member.len() as u32 != isize {
            return Err(bad("gzip ISIZE mismatch"));
        }
        if pos == data.len() {
            return Ok(out);
        }
    }
}

/// gzip-compress `data` as one member (used by tests and demos that need a valid body).
pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), Compression::new(6));
    // Writing into a Vec cannot fail.
    enc.write_all(data).expect("gzip into memory");
    enc.finish().expect("gzip into memory")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_matches_the_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn round_trip_and_multi_member() {
        let a = gzip(b"hello\n");
        assert_eq!(gunzip(&a, 100).unwrap(), b"hello\n");
        let mut two = a.clone();
        two.extend_from_slice(&gzip(b"world\n"));
        assert_eq!(gunzip(&two, 100).unwrap(), b"hello\nworld\n");
    }

    #[test]
    fn header_fields_are_skipped() {
        let mut g = gzip(b"x");
        g[3] = FNAME | FEXTRA;
        let mut extra = vec![3, 0, 9, 9, 9];
        extra.extend_from_slice(b"name.csv\0");
        g.splice(10..10, extra);
        assert_eq!(gunzip(&g, 10).unwrap(), b"x");
    }

    /// A member as another encoder writes it: level 9, every optional header field `flate2` can set.
    fn flate2_member(data: &[u8]) -> Vec<u8> {
        let mut enc = flate2::GzBuilder::new()
            .filename("events.csv")
            .comment("from a test")
            .extra(vec![b'K', b'E', 2, 0, 7, 7])
            .mtime(1_700_000_000)
            .write(Vec::new(), Compression::best());
        enc.write_all(data).unwrap();
        enc.finish().unwrap()
    }

    #[test]
    fn other_encoders_headers_and_levels_are_accepted() {
        let a = flate2_member(b"a,1\n");
        assert_eq!(a[3], FNAME | FCOMMENT | FEXTRA);
        let mut two = a.clone();
        two.extend_from_slice(&flate2_member(&b"b,2\n".repeat(1000)));
        let mut want = b"a,1\n".to_vec();
        want.extend_from_slice(&b"b,2\n".repeat(1000));
        assert_eq!(gunzip(&two, 1 << 20).unwrap(), want);
    }

    #[test]
    fn header_crc_is_checked_and_reserved_flags_refused() {
        let g = gzip(b"x");
        let mut with_hcrc = g[..10].to_vec();
        with_hcrc[3] = FTEXT_FHCRC;
        let hcrc = (crc32(&with_hcrc) & 0xffff) as u16;
        with_hcrc.extend_from_slice(&hcrc.to_le_bytes());
        with_hcrc.extend_from_slice(&g[10..]);
        assert_eq!(gunzip(&with_hcrc, 10).unwrap(), b"x");
        with_hcrc[10] ^= 1;
        assert!(matches!(gunzip(&with_hcrc, 10), Err(GzipError::Bad(m)) if m.contains("CRC16")));
        let mut reserved = g.clone();
        reserved[3] = 0x20;
        assert!(matches!(gunzip(&reserved, 10), Err(GzipError::Bad(m)) if m.contains("reserved")));
        let mut method = g;
        method[2] = 7;
        assert!(matches!(gunzip(&method, 10), Err(GzipError::Bad(m)) if m.contains("method")));
    }

    #[test]
    fn corrupt_deflate_data_is_refused() {
        let mut g = gzip(b"x");
        // Block type 3 is reserved in RFC 1951.
        g[10] = 0x07;
        assert!(matches!(gunzip(&g, 10), Err(GzipError::Bad(m)) if m.contains("corrupt")));
    }

    #[test]
    fn corruption_is_refused() {
        let g = gzip(b"some data to compress, some data to compress");
        let mut bad_magic = g.clone();
        bad_magic[0] = 0;
        assert!(matches!(gunzip(&bad_magic, 1000), Err(GzipError::Bad(_))));
        let mut bad_crc = g.clone();
        let n = bad_crc.len();
        bad_crc[n - 8] ^= 1;
        assert!(matches!(gunzip(&bad_crc, 1000), Err(GzipError::Bad(m)) if m.contains("CRC32")));
        let mut bad_isize = g.clone();
        bad_isize[n - 1] ^= 1;
        assert!(matches!(gunzip(&bad_isize, 1000), Err(GzipError::Bad(m)) if m.contains("ISIZE")));
        for cut in [5, 12, n - 9, n - 3] {
            assert!(
                matches!(gunzip(&g[..cut], 1000), Err(GzipError::Bad(_))),
                "cut at {cut}"
            );
        }
        let mut trailing = g.clone();
        trailing.extend_from_slice(b"junk");
        assert!(gunzip(&trailing, 1000).is_err());
    }

    #[test]
    fn bomb_is_capped() {
        let big = vec![b'a'; 10 * 1024 * 1024];
        let g = gzip(&big);
        assert!(g.len() < 100 * 1024);
        assert_eq!(gunzip(&g, 1024 * 1024), Err(GzipError::TooLarge));
        assert_eq!(gunzip(&g, big.len()).unwrap().len(), big.len());
    }
}
