//! gzip (RFC 1952) decoding with a hard output cap, and a small encoder for tests.
//!
//! The service refuses a body whose gzip framing is wrong, so we check everything a strict
//! decoder would: magic, method, reserved flags, header fields, CRC32 and ISIZE of every member.
//! Inflation is streamed into a capped buffer so a "zip bomb" costs at most `cap + 64 KiB`.

use miniz_oxide::inflate::stream::{inflate, InflateState};
use miniz_oxide::{DataFormat, MZError, MZFlush, MZStatus};

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

/// CRC-32 (IEEE 802.3, reflected, as gzip uses it).
pub fn crc32(data: &[u8]) -> u32 {
    crc32_update(0, data)
}

fn crc32_table() -> &'static [u32; 256] {
    static TABLE: std::sync::OnceLock<[u32; 256]> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| {
        let mut t = [0u32; 256];
        for (i, slot) in t.iter_mut().enumerate() {
            let mut c = i as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 {
                    0xEDB8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
            }
            *slot = c;
        }
        t
    })
}

fn crc32_update(crc: u32, data: &[u8]) -> u32 {
    let t = crc32_table();
    let mut c = !crc;
    for &b in data {
        c = t[((c ^ b as u32) & 0xff) as usize] ^ (c >> 8);
    }
    !c
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
        let mut state = InflateState::new_boxed(DataFormat::Raw);
        loop {
            let res = inflate(&mut state, &data[pos..], &mut chunk, MZFlush::None);
            pos += res.bytes_consumed;
            if out.len() + res.bytes_written > cap {
                return Err(GzipError::TooLarge);
            }
            out.extend_from_slice(&chunk[..res.bytes_written]);
            match res.status {
                Ok(MZStatus::StreamEnd) => break,
                Ok(_) => {
                    if res.bytes_consumed == 0 && res.bytes_written == 0 {
                        return Err(bad("gzip deflate stream truncated"));
                    }
                }
                Err(MZError::Buf) => {
                    if pos >= data.len() || res.bytes_consumed == 0 && res.bytes_written == 0 {
                        return Err(bad("gzip deflate stream truncated"));
                    }
                }
                Err(e) => return Err(bad(format!("gzip deflate data corrupt ({e:?})"))),
            }
        }
        if data.len() < pos + 8 {
            return Err(bad("gzip trailer truncated"));
        }
        let crc = u32::from_le_bytes(data[pos..pos + 4].try_into().unwrap());
        let isize = u32::from_le_bytes(data[pos + 4..pos + 8].try_into().unwrap());
        pos += 8;
        let member = &out[member_start..];
        if crc32(member) != crc {
            return Err(bad("gzip CRC32 mismatch"));
        }
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
    let mut out = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255];
    out.extend_from_slice(&miniz_oxide::deflate::compress_to_vec(data, 6));
    out.extend_from_slice(&crc32(data).to_le_bytes());
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out
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
