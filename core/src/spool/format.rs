//! Byte layout of one chunk file (see the table in `mod.rs`): encoding and strict decoding of the
//! header. Decoding trusts nothing: every length is bounded before it is used, so a torn or
//! flipped file can only ever produce an error, never a panic or a huge allocation.

use super::{ChunkHeader, DestKey, SinkId, SpoolError};
use crate::crc32::crc32;

/// Identifies a spool chunk file ("Kusto Edge Spool Chunk").
pub(crate) const MAGIC: [u8; 4] = *b"KESC";
/// The version `push` writes; bumped on any incompatible layout change. Older versions are read
/// (version 1: a streaming chunk). A file of a newer version cannot be verified by this firmware
/// (its header layout is unknown), so it is neither trusted nor judged: the spool leaves it where
/// it is, counted, for the newer firmware that wrote it (a downgrade keeps the data).
pub(crate) const VERSION: u8 = 2;
/// Bytes of the fixed part of a version 1 header, before the destination strings.
pub(crate) const FIXED_LEN_V1: usize = 72;
/// Bytes of the fixed part of the header: version 1's plus the sink byte.
pub(crate) const FIXED_LEN: usize = FIXED_LEN_V1 + 1;
/// Longest database, table, format or mapping name accepted, in bytes. Kusto's own names are at
/// most 1024 characters; the bound keeps the header small enough to read into a fixed buffer.
pub const MAX_NAME_LEN: usize = 1024;
/// Largest possible header (fixed part and four names), without its CRC.
pub(crate) const MAX_HEADER_LEN: usize = FIXED_LEN + 4 * MAX_NAME_LEN;
/// Bytes of each CRC-32 (after the header, and at the end of the file).
pub(crate) const CRC_LEN: usize = 4;
/// AES-GCM nonce bytes stored in the header.
pub(crate) const NONCE_LEN: usize = 12;
/// Bytes of the key identifier stored in the header of sealed chunks.
pub(crate) const KEY_ID_LEN: usize = 8;
/// AES-GCM tag bytes stored after the ciphertext.
pub(crate) const TAG_LEN: usize = 16;

pub(crate) const FLAG_GZIP: u8 = 0x01;
pub(crate) const FLAG_SEALED: u8 = 0x02;
pub(crate) const FLAG_MAPPING: u8 = 0x04;
const KNOWN_FLAGS: u8 = FLAG_GZIP | FLAG_SEALED | FLAG_MAPPING;

/// What a sealed chunk needs besides the key to be opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Sealing {
    pub nonce: [u8; NONCE_LEN],
    pub key_id: [u8; KEY_ID_LEN],
}

/// Why a header was not decoded.
#[derive(Debug)]
pub(crate) enum BadHeader {
    /// Damaged, torn or not a chunk at all.
    Corrupt(String),
    /// Written by newer firmware (a newer format version, or a sink this version does not know):
    /// to be left alone, not judged.
    Newer,
}

impl BadHeader {
    fn corrupt(why: &str) -> Self {
        BadHeader::Corrupt(why.to_owned())
    }
}

/// A decoded, checksum-verified header.
#[derive(Clone, Debug)]
pub(crate) struct Decoded {
    pub header: ChunkHeader,
    /// Bytes stored after the header CRC (ciphertext and tag when sealed).
    pub stored_len: u32,
    pub seal: Option<Sealing>,
    /// Bytes of the header before its CRC.
    pub header_len: usize,
}

impl Decoded {
    /// Bytes of the payload as the caller sees it (what `read` returns).
    pub fn payload_len(&self) -> u32 {
        if self.seal.is_some() {
            self.stored_len - TAG_LEN as u32
        } else {
            self.stored_len
        }
    }

    /// Offset of the first stored payload byte in the file.
    pub fn payload_offset(&self) -> u64 {
        (self.header_len + CRC_LEN) as u64
    }

    /// Size the file must have.
    pub fn file_len(&self) -> u64 {
        file_len(self.header_len, self.stored_len)
    }
}

/// Size of a chunk file with a header of `header_len` bytes and `stored_len` payload bytes.
pub(crate) fn file_len(header_len: usize, stored_len: u32) -> u64 {
    header_len as u64 + CRC_LEN as u64 + stored_len as u64 + CRC_LEN as u64
}

/// Header length (without CRC) that `dest` will produce (current version).
pub(crate) fn header_len(dest: &DestKey) -> usize {
    FIXED_LEN
        + dest.database.len()
        + dest.table.len()
        + dest.format.len()
        + dest.mapping.as_ref().map_or(0, |m| m.len())
}

fn check_name(what: &str, s: &str) -> Result<(), SpoolError> {
    if s.len() > MAX_NAME_LEN {
        return Err(SpoolError::InvalidHeader(format!(
            "{what} name is {} bytes; the spool stores at most {MAX_NAME_LEN}",
            s.len()
        )));
    }
    Ok(())
}

/// Encodes the header followed by its CRC into `out` (cleared first).
pub(crate) fn encode_header(
    h: &ChunkHeader,
    stored_len: u32,
    seal: Option<&Sealing>,
    out: &mut Vec<u8>,
) -> Result<(), SpoolError> {
    let d = &h.dest;
    check_name("database", &d.database)?;
    check_name("table", &d.table)?;
    check_name("format", &d.format)?;
    if let Some(m) = &d.mapping {
        check_name("mapping", m)?;
    }
    let mut flags = 0;
    if h.gzip {
        flags |= FLAG_GZIP;
    }
    if seal.is_some() {
        flags |= FLAG_SEALED;
    }
    if d.mapping.is_some() {
        flags |= FLAG_MAPPING;
    }
    let hlen = header_len(d);
    out.clear();
    out.extend_from_slice(&MAGIC);
    out.push(VERSION);
    out.push(flags);
    out.extend_from_slice(&(hlen as u16).to_le_bytes());
    out.extend_from_slice(&h.chunk_id);
    out.extend_from_slice(&h.created_unix_ms.to_le_bytes());
    out.extend_from_slice(&h.raw_len.to_le_bytes());
    out.extend_from_slice(&h.records.to_le_bytes());
    out.extend_from_slice(&stored_len.to_le_bytes());
    match seal {
        Some(s) => {
            out.extend_from_slice(&s.nonce);
            out.extend_from_slice(&s.key_id);
        }
        None => out.extend_from_slice(&[0u8; NONCE_LEN + KEY_ID_LEN]),
    }
    let mapping = d.mapping.as_deref().unwrap_or("");
    for s in [&d.database[..], &d.table[..], &d.format[..], mapping] {
        out.extend_from_slice(&(s.len() as u16).to_le_bytes());
    }
    out.push(h.sink as u8);
    debug_assert_eq!(out.len(), FIXED_LEN);
    for s in [&d.database[..], &d.table[..], &d.format[..], mapping] {
        out.extend_from_slice(s.as_bytes());
    }
    debug_assert_eq!(out.len(), hlen);
    let crc = crc32(out);
    out.extend_from_slice(&crc.to_le_bytes());
    Ok(())
}

/// Reads the header length from the first 8 bytes, so the caller knows how much more to read.
pub(crate) fn header_len_from_prefix(prefix: &[u8]) -> Result<usize, BadHeader> {
    if prefix.len() < 8 {
        return Err(BadHeader::corrupt("file too short for a chunk header"));
    }
    if prefix[..4] != MAGIC {
        return Err(BadHeader::corrupt("not a spool chunk (bad magic)"));
    }
    let fixed = match prefix[4] {
        1 => FIXED_LEN_V1,
        VERSION => FIXED_LEN,
        0 => return Err(BadHeader::corrupt("chunk format version 0")),
        _ => return Err(BadHeader::Newer),
    };
    let hlen = u16::from_le_bytes([prefix[6], prefix[7]]) as usize;
    if !(fixed..=fixed + 4 * MAX_NAME_LEN).contains(&hlen) {
        return Err(BadHeader::Corrupt(format!(
            "header length {hlen} out of range"
        )));
    }
    Ok(hlen)
}

fn le_u16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn le_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Decodes `bytes` = header followed by its CRC, checking the CRC and every field. Version 1
/// headers (no sink byte) decode as streaming chunks.
pub(crate) fn decode_header(bytes: &[u8]) -> Result<Decoded, BadHeader> {
    let hlen = header_len_from_prefix(bytes)?;
    if bytes.len() != hlen + CRC_LEN {
        return Err(BadHeader::corrupt("truncated chunk header"));
    }
    let stored_crc = le_u32(bytes, hlen);
    if crc32(&bytes[..hlen]) != stored_crc {
        return Err(BadHeader::corrupt("chunk header checksum mismatch"));
    }
    let flags = bytes[5];
    if flags & !KNOWN_FLAGS != 0 {
        return Err(BadHeader::Corrupt(format!(
            "unknown chunk flags {flags:#04x}"
        )));
    }
    let (fixed, sink) = if bytes[4] == 1 {
        (FIXED_LEN_V1, SinkId::Streaming)
    } else {
        let sink = match bytes[FIXED_LEN_V1] {
            1 => SinkId::Streaming,
            2 => SinkId::Queued,
            // The checksum held, so this is no bit flip: a sink of newer firmware.
            _ => return Err(BadHeader::Newer),
        };
        (FIXED_LEN, sink)
    };
    let mut chunk_id = [0u8; 16];
    chunk_id.copy_from_slice(&bytes[8..24]);
    let mut ms = [0u8; 8];
    ms.copy_from_slice(&bytes[24..32]);
    let created_unix_ms = u64::from_le_bytes(ms);
    let raw_len = le_u32(bytes, 32);
    let records = le_u32(bytes, 36);
    let stored_len = le_u32(bytes, 40);
    let mut nonce = [0u8; NONCE_LEN];
    nonce.copy_from_slice(&bytes[44..56]);
    let mut key_id = [0u8; KEY_ID_LEN];
    key_id.copy_from_slice(&bytes[56..64]);
    let lens = [
        le_u16(bytes, 64),
        le_u16(bytes, 66),
        le_u16(bytes, 68),
        le_u16(bytes, 70),
    ];
    let total: usize = lens.iter().map(|&l| l as usize).sum();
    if lens.iter().any(|&l| l as usize > MAX_NAME_LEN) || fixed + total != hlen {
        return Err(BadHeader::corrupt(
            "destination name lengths do not match the header length",
        ));
    }
    if flags & FLAG_MAPPING == 0 && lens[3] != 0 {
        return Err(BadHeader::corrupt(
            "mapping name present without the mapping flag",
        ));
    }
    let mut at = fixed;
    let mut names: [String; 4] = Default::default();
    for (i, &l) in lens.iter().enumerate() {
        let s = std::str::from_utf8(&bytes[at..at + l as usize])
            .map_err(|_| BadHeader::corrupt("destination name is not UTF-8"))?;
        names[i] = s.to_owned();
        at += l as usize;
    }
    let sealed = flags & FLAG_SEALED != 0;
    if sealed && (stored_len as usize) < TAG_LEN {
        return Err(BadHeader::corrupt("sealed payload shorter than its tag"));
    }
    let [database, table, format, mapping] = names;
    Ok(Decoded {
        header: ChunkHeader {
            chunk_id,
            dest: DestKey {
                database,
                table,
                format,
                mapping: if flags & FLAG_MAPPING != 0 {
                    Some(mapping)
                } else {
                    None
                },
            },
            created_unix_ms,
            raw_len,
            records,
            gzip: flags & FLAG_GZIP != 0,
            sink,
        },
        stored_len,
        seal: if sealed {
            Some(Sealing { nonce, key_id })
        } else {
            None
        },
        header_len: hlen,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(mapping: Option<&str>) -> ChunkHeader {
        ChunkHeader {
            chunk_id: *b"0123456789abcdef",
            dest: DestKey {
                database: "db".into(),
                table: "Telemetry".into(),
                format: "multijson".into(),
                mapping: mapping.map(str::to_owned),
            },
            created_unix_ms: 1_700_000_000_123,
            raw_len: 4 << 20,
            records: 77,
            gzip: true,
            sink: SinkId::Queued,
        }
    }

    #[test]
    fn header_round_trips_with_and_without_mapping_and_seal() {
        let seal = Sealing {
            nonce: [7; NONCE_LEN],
            key_id: [9; KEY_ID_LEN],
        };
        for (m, s) in [(None, None), (Some("map"), Some(&seal)), (Some(""), None)] {
            let h = header(m);
            let mut buf = Vec::new();
            encode_header(&h, 1234, s, &mut buf).unwrap();
            assert_eq!(buf.len(), header_len(&h.dest) + CRC_LEN);
            let d = decode_header(&buf).unwrap();
            assert_eq!(d.header, h);
            assert_eq!(d.stored_len, 1234);
            assert_eq!(d.seal.as_ref(), s);
        }
    }

    #[test]
    fn every_single_bit_flip_in_a_header_is_detected() {
        let mut buf = Vec::new();
        encode_header(&header(Some("m")), 10, None, &mut buf).unwrap();
        for bit in 0..buf.len() * 8 {
            let mut b = buf.clone();
            b[bit / 8] ^= 1 << (bit % 8);
            // Either the prefix check fails, or the length no longer matches, or the CRC catches it.
            assert!(decode_header(&b).is_err(), "bit {bit} undetected");
        }
    }

    #[test]
    fn overlong_names_are_refused_before_anything_is_written() {
        let mut h = header(None);
        h.dest.table = "t".repeat(MAX_NAME_LEN + 1);
        assert!(matches!(
            encode_header(&h, 0, None, &mut Vec::new()),
            Err(SpoolError::InvalidHeader(_))
        ));
    }
}
