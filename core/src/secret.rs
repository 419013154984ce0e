//! A string (and bytes) that hold a secret (token, client secret, assertion, proxy password): zeroed when dropped and never
//! shown by `Debug` or `Display`.
//!
//! A leaf module (it depends on nothing in the crate), so that authentication and the transport's proxy settings
//! share it without depending on each other.

use std::fmt;

use zeroize::Zeroize;

/// A secret string, zeroed when dropped.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SecretString(String);

impl SecretString {
    /// Wraps a secret value.
    pub fn new(s: impl Into<String>) -> Self {
        SecretString(s.into())
    }

    /// The value, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// True when there is no secret at all.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Appends to the secret in place: building a form body or a header inside the secret keeps every copy of the
    /// secret in memory that is zeroed.
    pub(crate) fn push_str(&mut self, s: &str) {
        // Growing would leave the old allocation behind unzeroed: reserve first, zeroing what we leave.
        if self.0.capacity() - self.0.len() < s.len() {
            let mut bigger =
                String::with_capacity((self.0.len() + s.len()).max(2 * self.0.capacity()));
            bigger.push_str(&self.0);
            let old = std::mem::replace(&mut self.0, bigger);
            drop(SecretString(old));
        }
        self.0.push_str(s);
    }
}

impl Drop for SecretString {
    fn drop(&mut self) {
        // Zeroes the whole capacity, not just the length, with writes the compiler may not remove.
        self.0.zeroize();
    }
}

/// Bytes that may hold a secret (a token endpoint's answer, a read buffer): zeroed when dropped, capacity
/// included.
#[derive(Default)]
pub struct SecretBytes(pub Vec<u8>);

impl Drop for SecretBytes {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl fmt::Debug for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretString(***)")
    }
}

impl fmt::Display for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_is_not_shown_by_debug_or_display() {
        let s = SecretString::new("hunter2-token");
        assert!(!format!("{s:?}").contains("hunter2"));
        assert!(!format!("{s}").contains("hunter2"));
        assert_eq!(s.expose(), "hunter2-token");
    }

    #[test]
    fn push_keeps_the_value_whole() {
        let mut s = SecretString::new("a");
        for _ in 0..100 {
            s.push_str("bc");
        }
        assert_eq!(s.expose().len(), 201);
    }
}
