//! The one bounded body reader: a response body is read into a buffer the caller sized, never past its end,
//! and what did not fit (or a read that failed halfway) is reported, not grown into.

use std::io::Read;

/// What [`read_into`] read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyRead {
    /// Bytes at the start of the buffer.
    pub len: usize,
    /// The body went on past the buffer, or reading it failed: what is there is a prefix. The status of the
    /// answer still counts; a body cut short only loses detail.
    pub cut: bool,
}

/// Reads `reader` into `out` until the body ends or `out` is full; when full, one more read (into a byte on the
/// stack) tells whether there was more.
pub fn read_into(reader: &mut impl Read, out: &mut [u8]) -> BodyRead {
    let mut len = 0;
    while len < out.len() {
        match reader.read(&mut out[len..]) {
            Ok(0) => return BodyRead { len, cut: false },
            Ok(k) => len += k,
            Err(_) => return BodyRead { len, cut: true },
        }
    }
    let mut probe = [0u8; 1];
    let cut = !matches!(reader.read(&mut probe), Ok(0));
    BodyRead { len, cut }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hands out its bytes a few at a time, then fails if told to.
    struct Trickle<'a>(&'a [u8], bool);

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            if self.0.is_empty() {
                return if self.1 {
                    Err(std::io::Error::other("reset"))
                } else {
                    Ok(0)
                };
            }
            let n = buf.len().min(self.0.len()).min(3);
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    #[test]
    fn a_body_is_read_up_to_the_buffer_and_what_did_not_fit_is_said() {
        let mut out = [0u8; 8];
        let r = read_into(&mut Trickle(b"hello", false), &mut out);
        assert_eq!(r, BodyRead { len: 5, cut: false });
        assert_eq!(&out[..5], b"hello");
        assert_eq!(
            read_into(&mut Trickle(b"12345678", false), &mut out),
            BodyRead { len: 8, cut: false }
        );
        assert_eq!(
            read_into(&mut Trickle(b"123456789", false), &mut out),
            BodyRead { len: 8, cut: true }
        );
        assert_eq!(
            read_into(&mut Trickle(b"1234", true), &mut out),
            BodyRead { len: 4, cut: true }
        );
        assert_eq!(
            read_into(&mut Trickle(b"", false), &mut [0u8; 0]),
            BodyRead { len: 0, cut: false }
        );
    }
}
