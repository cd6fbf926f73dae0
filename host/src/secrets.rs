//! Small helpers for secret material: random bytes, hex, SHA-256 digests, and files only
//! the owner can read, written atomically.

use std::io::Write;
use std::path::Path;

use sha2::{Digest, Sha256};

/// `N` bytes from the operating system's random source (`getrandom`).
pub fn random_bytes<const N: usize>() -> std::io::Result<[u8; N]> {
    let mut buf = [0u8; N];
    getrandom::fill(&mut buf)?;
    Ok(buf)
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    ::hex::encode(bytes)
}

/// Hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// Write `bytes` to `path` with mode 0600: to a temporary name, synced, then renamed, so a
/// crash never leaves a half-written secret under the real name.
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    crate::fsutil::private_dir(dir)?;
    let name = path.file_name().map_or_else(|| "secret".into(), |n| n.to_string_lossy().into_owned());
    let tmp = dir.join(format!("{name}.{}.tmp", std::process::id()));
    {
        let mut f = crate::fsutil::create_private(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_files_are_owner_only_and_hex_is_lower_case() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/key");
        write_private(&path, b"abc").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"abc");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        }
        assert_eq!(hex(&[0x0a, 0xff]), "0aff");
        assert_ne!(random_bytes::<16>().unwrap(), random_bytes::<16>().unwrap());
    }
}
