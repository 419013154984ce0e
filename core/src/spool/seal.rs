//! Encryption at rest: AES-256-GCM with a random 96-bit nonce per chunk and the chunk header as
//! associated data, so neither the payload nor the destination/lengths can be altered unnoticed.
//!
//! Random nonces are safe here: the birthday bound for 96-bit nonces (2^32 chunks per key at
//! a 2^-32 collision risk) is far beyond what one gateway writes in its life.
//!
//! The key itself is never stored. Each sealed chunk carries an 8-byte key identifier (HMAC of a
//! fixed label under the key), so a chunk written under another key is recognised on open without
//! decrypting it (decrypting needs a payload-sized buffer; `open` only has a small scratch).

use super::format::{Sealing, KEY_ID_LEN, NONCE_LEN, TAG_LEN};
use ring::aead::{Aad, LessSafeKey, Nonce, Tag, UnboundKey, AES_256_GCM};
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};

const KEY_ID_LABEL: &[u8] = b"kusto-edge spool key id v1";

/// A sealing key ready for use; deliberately not `Debug` so it can never be logged.
pub(crate) struct Sealer {
    key: LessSafeKey,
    key_id: [u8; KEY_ID_LEN],
    rng: SystemRandom,
}

impl Sealer {
    pub fn new(key: &[u8; 32]) -> Self {
        // AES-256 accepts every 32-byte key, so this cannot fail.
        let key_obj =
            LessSafeKey::new(UnboundKey::new(&AES_256_GCM, key).expect("32-byte AES-256 key"));
        let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), KEY_ID_LABEL);
        let mut key_id = [0u8; KEY_ID_LEN];
        key_id.copy_from_slice(&tag.as_ref()[..KEY_ID_LEN]);
        Sealer {
            key: key_obj,
            key_id,
            rng: SystemRandom::new(),
        }
    }

    /// The identifier written into sealed chunk headers.
    pub fn key_id(&self) -> [u8; KEY_ID_LEN] {
        self.key_id
    }

    /// A fresh nonce for one chunk, with this key's identifier.
    pub fn new_sealing(&self) -> Result<Sealing, ()> {
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).map_err(|_| ())?;
        Ok(Sealing {
            nonce,
            key_id: self.key_id,
        })
    }

    /// Encrypts `buf` in place; `aad` is the header (without its CRC).
    pub fn seal(&self, s: &Sealing, aad: &[u8], buf: &mut [u8]) -> Result<[u8; TAG_LEN], ()> {
        let tag = self
            .key
            .seal_in_place_separate_tag(Nonce::assume_unique_for_key(s.nonce), Aad::from(aad), buf)
            .map_err(|_| ())?;
        let mut out = [0u8; TAG_LEN];
        out.copy_from_slice(tag.as_ref());
        Ok(out)
    }

    /// Decrypts `buf` in place; on failure `buf` holds garbage and must not be used.
    pub fn open(
        &self,
        s: &Sealing,
        aad: &[u8],
        tag: [u8; TAG_LEN],
        buf: &mut [u8],
    ) -> Result<(), ()> {
        self.key
            .open_in_place_separate_tag(
                Nonce::assume_unique_for_key(s.nonce),
                Aad::from(aad),
                Tag::from(tag),
                buf,
                0..,
            )
            .map(|_| ())
            .map_err(|_| ())
    }
}
