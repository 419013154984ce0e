//! Azure Arc-enabled servers: detecting the Arc agent and reading its challenge file safely.
//!
//! The agent answers the first token request with `401` and `WWW-Authenticate: Basic realm=<path>`; whoever can
//! read that file proves it runs on the machine (as root or in the `himds` group). The path comes from an HTTP
//! answer, so it is untrusted: anything on localhost could claim to be the agent and name `/etc/shadow`. We read
//! it only when, after resolving symlinks, it is a `.key` file directly inside the key directory and small.

use std::io::Read;
use std::path::{Component, Path, PathBuf};

use crate::error::{Error, ErrorKind};

use crate::secret::SecretString;

/// Where the Arc agent writes its challenge files.
pub const ARC_KEY_DIR: &str = "/var/opt/azcmagent/tokens/";
/// The Arc agent's token endpoint when `IDENTITY_ENDPOINT` is not set.
pub const ARC_DEFAULT_ENDPOINT: &str = "http://localhost:40342/metadata/identity/oauth2/token";
/// Largest challenge file accepted.
pub const ARC_KEY_MAX_BYTES: u64 = 4096;
/// The Arc agent's binary: its presence says this is an Arc-enabled server.
const HIMDS: &str = "/var/opt/azcmagent/bin/himds";

/// True on an Azure Arc-enabled server: `IDENTITY_ENDPOINT` and `IMDS_ENDPOINT` are set (as the agent sets them
/// for services), or the agent's `himds` binary exists.
pub fn arc_detected() -> bool {
    let env = |k| std::env::var_os(k).is_some_and(|v| !v.is_empty());
    (env("IDENTITY_ENDPOINT") && env("IMDS_ENDPOINT")) || Path::new(HIMDS).exists()
}

/// The Arc endpoint to use: `IDENTITY_ENDPOINT` when set, else the agent's default.
pub fn arc_endpoint_from_env() -> String {
    std::env::var("IDENTITY_ENDPOINT")
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| ARC_DEFAULT_ENDPOINT.to_owned())
}

/// The path in `Basic realm=<path>` (quotes allowed), or `None` when the header is no such challenge.
pub fn challenge_path(header: &str) -> Option<String> {
    let h = header.trim();
    let scheme = h.get(..6)?;
    if !scheme.eq_ignore_ascii_case("basic ") {
        return None;
    }
    let rest = h[6..].trim_start();
    let realm = rest.get(..6)?;
    if !realm.eq_ignore_ascii_case("realm=") {
        return None;
    }
    let v = rest[6..].trim();
    let v = v
        .strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or(v);
    (!v.is_empty()).then(|| v.to_owned())
}

fn refused(path: &str, why: &str) -> Error {
    Error::new(
        ErrorKind::AuthRefused,
        format!("Azure Arc: refusing the challenge file '{path}': {why}"),
    )
}

/// Checks a challenge path from the agent against `key_dir`: absolute, no `..`, ends in `.key`, and after resolving
/// symlinks a regular file directly inside the (resolved) key directory, at most [`ARC_KEY_MAX_BYTES`] bytes.
/// Returns the resolved path.
pub fn check_arc_key_path(path: &str, key_dir: &Path) -> Result<PathBuf, Error> {
    let p = Path::new(path);
    if !p.is_absolute() {
        return Err(refused(path, "not an absolute path"));
    }
    if p.components().any(|c| matches!(c, Component::ParentDir)) {
        return Err(refused(path, "it contains '..'"));
    }
    if p.extension().and_then(|e| e.to_str()) != Some("key") {
        return Err(refused(path, "not a .key file"));
    }
    let dir = key_dir.canonicalize().map_err(|e| {
        refused(
            path,
            &format!(
                "the key directory '{}' is not accessible ({e})",
                key_dir.display()
            ),
        )
    })?;
    let real = p.canonicalize().map_err(|e| {
        refused(
            path,
            &format!("it cannot be resolved ({e}); is this user in the 'himds' group?"),
        )
    })?;
    // Checked again after resolving: a symlink inside the directory may point anywhere.
    if real.parent() != Some(dir.as_path()) {
        return Err(refused(
            path,
            &format!(
                "it is not inside '{}' (after resolving links)",
                key_dir.display()
            ),
        ));
    }
    if real.extension().and_then(|e| e.to_str()) != Some("key") {
        return Err(refused(path, "it links to a file that is not a .key file"));
    }
    let meta = std::fs::metadata(&real).map_err(|e| refused(path, &e.to_string()))?;
    if !meta.is_file() {
        return Err(refused(path, "not a regular file"));
    }
    if meta.len() > ARC_KEY_MAX_BYTES {
        return Err(refused(path, "larger than 4096 bytes"));
    }
    Ok(real)
}

/// Checks and reads a challenge file. The contents become the `Authorization: Basic` value, so they must be one
/// line of printable ASCII (a trailing newline is dropped).
pub fn read_key(path: &str, key_dir: &Path) -> Result<SecretString, Error> {
    let real = check_arc_key_path(path, key_dir)?;
    let f = std::fs::File::open(&real).map_err(|e| {
        refused(
            path,
            &format!("it cannot be read ({e}); add this user to the 'himds' group"),
        )
    })?;
    let mut s = String::with_capacity(ARC_KEY_MAX_BYTES as usize + 1);
    // Bounded again while reading: the file may have grown since it was checked.
    f.take(ARC_KEY_MAX_BYTES + 1)
        .read_to_string(&mut s)
        .map_err(|e| refused(path, &format!("it cannot be read ({e})")))?;
    let s = SecretString::new(s);
    if s.expose().len() as u64 > ARC_KEY_MAX_BYTES {
        return Err(refused(path, "larger than 4096 bytes"));
    }
    let key = s.expose().trim_end_matches(['\r', '\n']);
    if key.is_empty() || !key.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return Err(refused(path, "empty, or not one line of text"));
    }
    Ok(SecretString::new(key))
}

#[cfg(test)]
mod tests {
    use super::*;

    struct TempDir(PathBuf);
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn setup(name: &str) -> (TempDir, PathBuf) {
        let base = std::env::temp_dir().join(format!("kedge-arc-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let tokens = base.join("tokens");
        std::fs::create_dir_all(&tokens).unwrap();
        (TempDir(base), tokens)
    }

    #[test]
    fn a_key_file_inside_the_directory_is_read() {
        let (_t, dir) = setup("ok");
        let key = dir.join("abc.key");
        std::fs::write(&key, "0123456789abcdef\n").unwrap();
        let k = read_key(key.to_str().unwrap(), &dir).unwrap();
        assert_eq!(k.expose(), "0123456789abcdef");
        // The configured directory may be given with a trailing slash.
        let with_slash = format!("{}/", dir.display());
        assert!(check_arc_key_path(key.to_str().unwrap(), Path::new(&with_slash)).is_ok());
    }

    #[test]
    fn paths_outside_or_odd_are_refused() {
        let (_t, dir) = setup("bad");
        let outside = dir.parent().unwrap().join("outside.key");
        std::fs::write(&outside, "secret").unwrap();
        let sub = dir.join("sub");
        std::fs::create_dir_all(&sub).unwrap();
        std::fs::write(sub.join("nested.key"), "k").unwrap();
        std::fs::write(dir.join("notakey.txt"), "k").unwrap();
        std::fs::write(dir.join("big.key"), vec![b'a'; 4097]).unwrap();
        std::fs::write(dir.join("exact.key"), vec![b'a'; 4096]).unwrap();
        std::os::unix::fs::symlink(&outside, dir.join("link.key")).unwrap();
        std::os::unix::fs::symlink(dir.join("notakey.txt"), dir.join("link2.key")).unwrap();
        std::fs::create_dir_all(dir.join("dir.key")).unwrap();
        let d = dir.display();
        let cases = [
            (outside.display().to_string(), "not inside"),
            (format!("{d}/../outside.key"), ".."),
            (format!("{d}/sub/nested.key"), "not inside"),
            (format!("{d}/notakey.txt"), "not a .key"),
            (format!("{d}/big.key"), "4096"),
            (format!("{d}/link.key"), "not inside"),
            (format!("{d}/link2.key"), "not a .key"),
            (format!("{d}/missing.key"), "cannot be resolved"),
            (format!("{d}/dir.key"), "regular file"),
            ("relative/x.key".to_owned(), "absolute"),
            ("/etc/shadow".to_owned(), "not a .key"),
        ];
        for (p, why) in cases {
            let e = check_arc_key_path(&p, &dir).unwrap_err();
            assert_eq!(e.kind, ErrorKind::AuthRefused, "{p}");
            assert!(e.message.contains(why), "{p}: {}", e.message);
        }
        assert!(check_arc_key_path(&format!("{d}/exact.key"), &dir).is_ok());
    }

    #[test]
    fn a_link_inside_the_directory_to_a_key_inside_is_fine() {
        let (_t, dir) = setup("link-in");
        std::fs::write(dir.join("real.key"), "k").unwrap();
        std::os::unix::fs::symlink(dir.join("real.key"), dir.join("alias.key")).unwrap();
        assert!(read_key(&format!("{}/alias.key", dir.display()), &dir).is_ok());
    }

    #[test]
    fn challenge_header_forms() {
        assert_eq!(
            challenge_path("Basic realm=/var/opt/azcmagent/tokens/x.key").as_deref(),
            Some("/var/opt/azcmagent/tokens/x.key")
        );
        assert_eq!(
            challenge_path("basic  realm=\"/a/b.key\"").as_deref(),
            Some("/a/b.key")
        );
        assert_eq!(challenge_path("Bearer realm=/a.key"), None);
        assert_eq!(challenge_path("Basic realm="), None);
        assert_eq!(challenge_path("Basic"), None);
    }
}
