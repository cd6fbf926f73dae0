//! On-disk cache of compiled components, keyed by module digest and engine compatibility.
//!
//! `Component::deserialize` is unsafe on bytes wasmtime did not produce, so the cache only
//! deserializes files it wrote itself: each file carries an HMAC-SHA256 over its payload
//! under a random key kept in the cache folder (mode 0600). A file whose tag does not
//! match (corrupted, truncated, planted, written by another engine) is ignored and
//! replaced by a fresh compilation. Files are written to a temporary name and renamed,
//! so a crash never leaves a half-written artifact under a real name.

use std::hash::{Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use wasmtime::Engine;

const MAGIC: &[u8; 8] = b"CTXART01";
const TAG_LEN: usize = 32;

/// A folder of compiled artifacts for one engine configuration.
#[derive(Clone)]
pub struct ArtifactCache {
    dir: PathBuf,
    key: [u8; 32],
}

impl std::fmt::Debug for ArtifactCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArtifactCache").field("dir", &self.dir).finish_non_exhaustive()
    }
}

/// A stable hex name for the engine's compatibility hash.
pub fn engine_fingerprint(engine: &Engine) -> String {
    // DefaultHasher's algorithm is fixed for a given Rust release, which is all that
    // matters here: a new toolchain means a new host build and a new engine anyway.
    let mut h = std::collections::hash_map::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut h);
    format!("{:016x}", h.finish())
}

fn hmac(key: &[u8; 32], payload: &[u8]) -> [u8; 32] {
    let mut ipad = [0x36u8; 64];
    let mut opad = [0x5cu8; 64];
    for (i, k) in key.iter().enumerate() {
        ipad[i] ^= k;
        opad[i] ^= k;
    }
    let inner = Sha256::new().chain_update(ipad).chain_update(payload).finalize();
    Sha256::new().chain_update(opad).chain_update(inner).finalize().into()
}

fn load_or_create_key(dir: &Path) -> std::io::Result<[u8; 32]> {
    let path = dir.join("cache.key");
    if let Ok(bytes) = std::fs::read(&path)
        && let Ok(key) = <[u8; 32]>::try_from(bytes.as_slice())
    {
        return Ok(key);
    }
    let key = crate::secrets::random_bytes::<32>()?;
    crate::secrets::write_private(&path, &key)?;
    Ok(key)
}

impl ArtifactCache {
    /// Open the cache under `root`, in a sub-folder for this engine's compatibility hash.
    pub fn open(root: &Path, engine: &Engine) -> std::io::Result<Self> {
        crate::fsutil::private_dir(root)?;
        let key = load_or_create_key(root)?;
        let dir = root.join(engine_fingerprint(engine));
        crate::fsutil::private_dir(&dir)?;
        Ok(Self { dir, key })
    }

    fn path(&self, digest: &str) -> PathBuf {
        self.dir.join(format!("{digest}.cwasm"))
    }

    /// The verified serialized artifact for `digest`, if the cache holds an intact one.
    pub fn read(&self, digest: &str) -> Option<Vec<u8>> {
        let mut bytes = std::fs::read(self.path(digest)).ok()?;
        if bytes.len() < MAGIC.len() + TAG_LEN || &bytes[..MAGIC.len()] != MAGIC {
            tracing::warn!(digest, "ignoring a cached artifact with a bad header");
            return None;
        }
        let (tag, payload) = bytes[MAGIC.len()..].split_at(TAG_LEN);
        // Not constant-time: the key never leaves this host and the file is local.
        if hmac(&self.key, payload) != tag {
            tracing::warn!(digest, "ignoring a cached artifact whose tag does not match");
            return None;
        }
        bytes.drain(..MAGIC.len() + TAG_LEN);
        Some(bytes)
    }

    /// Store the serialized artifact for `digest`, atomically.
    pub fn write(&self, digest: &str, payload: &[u8]) -> std::io::Result<()> {
        let tmp = self.dir.join(format!("{digest}.{}.tmp", std::process::id()));
        {
            let mut f = crate::fsutil::create_private(&tmp)?;
            f.write_all(MAGIC)?;
            f.write_all(&hmac(&self.key, payload))?;
            f.write_all(payload)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, self.path(digest))
    }

    /// Remove the artifact for `digest`, if there is one.
    pub fn remove(&self, digest: &str) -> std::io::Result<()> {
        match std::fs::remove_file(self.path(digest)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_matches_rfc4231_case_2_shape() {
        // RFC 4231 test case 2 uses a 4-byte key; ours are 32 bytes, zero-padded the same
        // way, so the key "Jefe" padded to 32 bytes gives the same tag.
        let mut key = [0u8; 32];
        key[..4].copy_from_slice(b"Jefe");
        let tag = hmac(&key, b"what do ya want for nothing?");
        assert_eq!(crate::secrets::hex(&tag), "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
    }

    #[test]
    fn tampered_or_foreign_artifacts_are_not_returned() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::default();
        let cache = ArtifactCache::open(dir.path(), &engine).unwrap();
        cache.write("d1", b"payload").unwrap();
        assert_eq!(cache.read("d1").as_deref(), Some(&b"payload"[..]));

        let path = cache.path("d1");
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(cache.read("d1"), None, "a flipped payload bit must be refused");

        std::fs::write(cache.path("d2"), b"\0asm garbage").unwrap();
        assert_eq!(cache.read("d2"), None, "a planted file must be refused");

        // A second cache folder with its own key does not accept the first one's files.
        let other = tempfile::tempdir().unwrap();
        let cache2 = ArtifactCache::open(other.path(), &engine).unwrap();
        cache.write("d3", b"x").unwrap();
        std::fs::copy(cache.path("d3"), cache2.path("d3")).unwrap();
        assert_eq!(cache2.read("d3"), None);
    }

    #[test]
    fn a_removed_artifact_is_gone_and_removing_twice_is_fine() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ArtifactCache::open(dir.path(), &Engine::default()).unwrap();
        cache.write("d1", b"payload").unwrap();
        cache.remove("d1").unwrap();
        assert!(!cache.path("d1").exists());
        assert_eq!(cache.read("d1"), None);
        cache.remove("d1").unwrap();
    }
}
