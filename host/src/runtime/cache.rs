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

use hmac::{Hmac, Mac};
use sha2::Sha256;
use wasmtime::Engine;

type HmacSha256 = Hmac<Sha256>;

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

/// HMAC-SHA256 of `payload` under `key` (RFC 2104; the `hmac` crate).
fn mac(key: &[u8], payload: &[u8]) -> HmacSha256 {
    // Any key length is valid for HMAC: `new_from_slice` cannot fail here.
    let mut m = <HmacSha256 as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
    m.update(payload);
    m
}

/// The tag of `payload` under `key`.
fn tag(key: &[u8], payload: &[u8]) -> [u8; TAG_LEN] {
    mac(key, payload).finalize().into_bytes().into()
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
        if mac(&self.key, payload).verify_slice(tag).is_err() {
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
            f.write_all(&tag(&self.key, payload))?;
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
    fn the_tag_matches_the_rfc4231_test_vectors() {
        // Test case 1: a 20-byte key of 0x0b, "Hi There".
        assert_eq!(
            ::hex::encode(tag(&[0x0b; 20], b"Hi There")),
            "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"
        );
        // Test case 2: the key "Jefe".
        assert_eq!(
            ::hex::encode(tag(b"Jefe", b"what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        // A 32-byte cache key is zero-padded to the block like "Jefe": the same tag, so
        // files written by the earlier hand-rolled HMAC stay valid.
        let mut padded = [0u8; 32];
        padded[..4].copy_from_slice(b"Jefe");
        assert_eq!(tag(&padded, b"what do ya want for nothing?"), tag(b"Jefe", b"what do ya want for nothing?"));
    }

    #[test]
    fn a_file_written_with_the_earlier_format_is_still_read() {
        // MAGIC, then the tag of the hand-rolled HMAC (RFC 2104 over a zero-padded key), then
        // the payload: what an older host left in the cache folder.
        let dir = tempfile::tempdir().unwrap();
        let cache = ArtifactCache::open(dir.path(), &Engine::default()).unwrap();
        let key: [u8; 32] = std::fs::read(dir.path().join("cache.key")).unwrap().try_into().unwrap();
        let payload = b"compiled bytes";
        let (mut ipad, mut opad) = ([0x36u8; 64], [0x5cu8; 64]);
        for (i, k) in key.iter().enumerate() {
            ipad[i] ^= k;
            opad[i] ^= k;
        }
        use sha2::Digest;
        let inner = Sha256::new().chain_update(ipad).chain_update(payload).finalize();
        let old_tag = Sha256::new().chain_update(opad).chain_update(inner).finalize();
        let mut file = MAGIC.to_vec();
        file.extend_from_slice(&old_tag);
        file.extend_from_slice(payload);
        std::fs::write(cache.path("old"), file).unwrap();
        assert_eq!(cache.read("old").as_deref(), Some(&payload[..]));
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
