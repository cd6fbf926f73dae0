//! Uploaded modules: their bytes in the store (the source of truth, shared by every node),
//! a local copy on disk (`DATA/modules/<digest>.wasm`), the loaded modules in memory (an
//! LRU), and deletion of what no record uses any more.
//!
//! # Bytes in the store
//!
//! A module's bytes are [`RecordKind::ModuleChunk`] records keyed
//! `<digest>/<chunk number, 8 digits>`, at most [`CHUNK_BYTES`] of payload each. Every
//! chunk starts with a small header ([`CHUNK_MAGIC`], the number of chunks, the total size)
//! so a reader knows the whole set from any chunk: a gap is
//! [`ModuleBytesError::MissingChunk`], and the bytes put together must hash (SHA-256) to the
//! digest, else [`ModuleBytesError::DigestMismatch`]. Either way nothing is compiled.
//!
//! The chunks are written before the module's record ([`Modules::save_bytes`], by the
//! upload), so a node that sees a module record can read its bytes. They are addressed by
//! digest: tenants uploading the same bytes share them, and they are deleted with the last
//! module record naming the digest ([`Modules::delete`]).
//!
//! Each node keeps a local copy of the bytes it read or received and its own compiled
//! artifacts (`DATA/cache`); a node with an empty data directory loads every module from
//! the store. A data directory from before the store held the bytes is migrated at start
//! ([`Modules::share_local_files`]).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::error::{AgentsError, AgentsResult};
use crate::registry::{ModuleRecord, Registry};
use crate::runtime::{Module, ModuleCache, Runtime, digest as digest_of, module_cache};
use crate::store::RecordKind;

/// Most payload bytes of one [`RecordKind::ModuleChunk`] record.
pub const CHUNK_BYTES: usize = 1 << 20;

/// The first bytes of every chunk record (format version 1).
pub const CHUNK_MAGIC: &[u8; 4] = b"CXM1";

/// Header length: magic, chunk count (u32, big-endian), total size (u64, big-endian).
const HEADER: usize = 4 + 4 + 8;

/// Why a module's bytes could not be read from the store. Nothing is compiled then.
#[derive(Debug, thiserror::Error)]
pub enum ModuleBytesError {
    /// The store holds no chunk of the module (and this node has no intact copy).
    #[error("module {digest} has no bytes in the store")]
    Absent {
        /// The module's digest.
        digest: String,
    },
    /// A chunk of the set is missing.
    #[error("module {digest} is missing chunk {index} of {count} in the store")]
    MissingChunk {
        /// The module's digest.
        digest: String,
        /// The first missing chunk.
        index: u32,
        /// How many chunks the set has.
        count: u32,
    },
    /// A chunk record is not one this host wrote (bad header, a key out of the set, or
    /// chunks that disagree on the set).
    #[error("module {digest}: chunk record {key} is malformed: {reason}")]
    MalformedChunk {
        /// The module's digest.
        digest: String,
        /// The chunk record's key.
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// The chunks put together do not hash to the digest (a chunk was altered).
    #[error("module {digest}: the stored bytes hash to {actual}, not to the digest")]
    DigestMismatch {
        /// The module's digest.
        digest: String,
        /// What the stored bytes hash to.
        actual: String,
    },
}

impl ModuleBytesError {
    /// A short stable code (a background compile that fails on it records this code).
    pub fn code(&self) -> &'static str {
        match self {
            ModuleBytesError::Absent { .. } => "module_bytes_absent",
            ModuleBytesError::MissingChunk { .. } => "module_chunk_missing",
            ModuleBytesError::MalformedChunk { .. } => "module_chunk_malformed",
            ModuleBytesError::DigestMismatch { .. } => "module_digest_mismatch",
        }
    }
}

/// The key of chunk `index` of module `digest`.
pub fn chunk_key(digest: &str, index: u32) -> String {
    format!("{digest}/{index:08}")
}

/// The chunk records of `bytes`: (index, record value), in order. An empty module has one
/// empty chunk, so every stored module has chunk 0.
pub fn chunks(bytes: &[u8]) -> Vec<(u32, Vec<u8>)> {
    let parts: Vec<&[u8]> = if bytes.is_empty() { vec![&[][..]] } else { bytes.chunks(CHUNK_BYTES).collect() };
    // A module is far below 4 Ti chunks of 1 MiB (uploads are bounded by the body limit).
    let count = u32::try_from(parts.len()).unwrap_or(u32::MAX);
    parts
        .into_iter()
        .enumerate()
        .map(|(i, part)| {
            let mut v = Vec::with_capacity(HEADER + part.len());
            v.extend_from_slice(CHUNK_MAGIC);
            v.extend_from_slice(&count.to_be_bytes());
            v.extend_from_slice(&(bytes.len() as u64).to_be_bytes());
            v.extend_from_slice(part);
            (u32::try_from(i).unwrap_or(u32::MAX), v)
        })
        .collect()
}

/// A chunk record's header (count, total size) and payload, or why it is not one.
fn parse_chunk(value: &[u8]) -> Result<(u32, u64, &[u8]), String> {
    if value.len() < HEADER || &value[..4] != CHUNK_MAGIC {
        return Err("no chunk header".into());
    }
    let count = u32::from_be_bytes([value[4], value[5], value[6], value[7]]);
    let mut size = [0u8; 8];
    size.copy_from_slice(&value[8..HEADER]);
    Ok((count, u64::from_be_bytes(size), &value[HEADER..]))
}

/// Put a module's chunk records (as listed, in key order) back together and verify them.
pub fn assemble(digest: &str, records: &[(String, Vec<u8>)]) -> Result<Vec<u8>, ModuleBytesError> {
    let malformed = |key: &str, reason: String| ModuleBytesError::MalformedChunk {
        digest: digest.to_owned(),
        key: key.to_owned(),
        reason,
    };
    let Some((first_key, first)) = records.first() else {
        return Err(ModuleBytesError::Absent { digest: digest.to_owned() });
    };
    let (count, size, _) = parse_chunk(first).map_err(|r| malformed(first_key, r))?;
    let mut bytes = Vec::with_capacity(usize::try_from(size).unwrap_or(0).min(1 << 30));
    let mut next = 0u32;
    for (key, value) in records {
        let index = key
            .strip_prefix(digest)
            .and_then(|k| k.strip_prefix('/'))
            .and_then(|n| n.parse::<u32>().ok())
            .ok_or_else(|| malformed(key, "not a chunk key of this module".into()))?;
        let (c, s, payload) = parse_chunk(value).map_err(|r| malformed(key, r))?;
        if (c, s) != (count, size) {
            return Err(malformed(
                key,
                format!("says {c} chunks of {s} bytes, chunk {first_key} says {count} of {size}"),
            ));
        }
        if index >= count {
            return Err(malformed(key, format!("beyond the {count} chunks of the set")));
        }
        if index != next {
            return Err(ModuleBytesError::MissingChunk { digest: digest.to_owned(), index: next, count });
        }
        bytes.extend_from_slice(payload);
        next += 1;
    }
    if next < count {
        return Err(ModuleBytesError::MissingChunk { digest: digest.to_owned(), index: next, count });
    }
    let actual = digest_of(&bytes);
    if actual != digest || bytes.len() as u64 != size {
        return Err(ModuleBytesError::DigestMismatch { digest: digest.to_owned(), actual });
    }
    Ok(bytes)
}

/// The modules of this node.
pub struct Modules {
    dir: PathBuf,
    cache: ModuleCache,
    /// Held while module bytes are written or freed (see [`Modules::delete`]).
    files: tokio::sync::Mutex<()>,
    runtime: Arc<Runtime>,
    registry: Registry,
    /// Makes the temporary names of concurrent local writes distinct.
    tmp_seq: AtomicU64,
}

impl std::fmt::Debug for Modules {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Modules").field("dir", &self.dir).finish_non_exhaustive()
    }
}

impl Modules {
    /// Modules kept in the registry's store, copied to `dir` (created, private), at most
    /// `cache_bytes` of them loaded.
    pub fn new(dir: PathBuf, cache_bytes: u64, runtime: Arc<Runtime>, registry: Registry) -> AgentsResult<Self> {
        crate::fsutil::private_dir(&dir).map_err(|e| AgentsError::Internal(format!("modules dir: {e}")))?;
        Ok(Self {
            dir,
            cache: ModuleCache::new(cache_bytes),
            files: tokio::sync::Mutex::new(()),
            runtime,
            registry,
            tmp_seq: AtomicU64::new(0),
        })
    }

    fn path(&self, digest: &str) -> PathBuf {
        self.dir.join(format!("{digest}.wasm"))
    }

    /// Held by an upload from saving its bytes until its record is written, and by a delete
    /// from removing the record until the bytes are freed: on this node, a delete never
    /// frees the bytes of a record being written.
    pub async fn files(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.files.lock().await
    }

    /// Keep an uploaded module's bytes, before its record is written: its chunks in the
    /// store (written again if there already: the same bytes, and a damaged set is
    /// repaired), then the local copy.
    pub async fn save_bytes(&self, digest: &str, bytes: &[u8]) -> AgentsResult<()> {
        self.put_chunks(digest, bytes).await?;
        self.write_local(digest, bytes)
    }

    async fn put_chunks(&self, digest: &str, bytes: &[u8]) -> AgentsResult<()> {
        let store = self.registry.store();
        for (i, value) in chunks(bytes) {
            store.record_put(RecordKind::ModuleChunk, &chunk_key(digest, i), value, None).await?;
        }
        Ok(())
    }

    /// Write the local copy of `digest` atomically (a temporary file renamed), unless it
    /// exists.
    fn write_local(&self, digest: &str, bytes: &[u8]) -> AgentsResult<()> {
        let path = self.path(digest);
        if path.exists() {
            return Ok(());
        }
        let seq = self.tmp_seq.fetch_add(1, Ordering::Relaxed);
        let tmp = self.dir.join(format!("{digest}.{}.{seq}.tmp", std::process::id()));
        let write = || -> std::io::Result<()> {
            use std::io::Write;
            let mut f = crate::fsutil::create_private(&tmp)?;
            f.write_all(bytes)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)
        };
        write().map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            AgentsError::Internal(format!("saving module {digest}: {e}"))
        })
    }

    /// The local copy of `digest`, if this node has an intact one (a copy that does not
    /// hash to its digest is ignored, and removed).
    fn read_local(&self, digest: &str) -> Option<Vec<u8>> {
        let path = self.path(digest);
        let bytes = std::fs::read(&path).ok()?;
        if digest_of(&bytes) == digest {
            return Some(bytes);
        }
        tracing::warn!(digest, "ignoring a local module copy that does not match its digest");
        let _ = std::fs::remove_file(&path);
        None
    }

    /// Module `digest`'s bytes from the store, verified.
    pub async fn read_stored(&self, digest: &str) -> AgentsResult<Vec<u8>> {
        let records = self.registry.store().record_list(RecordKind::ModuleChunk, &format!("{digest}/")).await?;
        Ok(assemble(digest, &records)?)
    }

    /// Whether the store seems to hold the whole chunk set of `digest` (its first and last
    /// chunks: two reads, not the bytes; [`Self::read_stored`] verifies the rest).
    async fn stored_set_present(&self, digest: &str) -> AgentsResult<bool> {
        let store = self.registry.store();
        let Some((first, _)) = store.record_get(RecordKind::ModuleChunk, &chunk_key(digest, 0)).await? else {
            return Ok(false);
        };
        let Ok((count, _, _)) = parse_chunk(&first) else { return Ok(false) };
        if count <= 1 {
            return Ok(count == 1);
        }
        Ok(store.record_get(RecordKind::ModuleChunk, &chunk_key(digest, count - 1)).await?.is_some())
    }

    /// Migrate a data directory from before the store held module bytes: every module
    /// record whose bytes this node has as a local file but the store lacks gets its
    /// chunks written from the file. Returns how many modules were written. At start,
    /// before compiles resume.
    pub async fn share_local_files(&self) -> AgentsResult<usize> {
        let records = self.registry.list::<ModuleRecord>(RecordKind::Module, "").await?;
        let mut digests: Vec<String> = records.into_iter().map(|m| m.digest).collect();
        digests.sort();
        digests.dedup();
        let mut n = 0;
        for d in digests {
            if self.stored_set_present(&d).await? {
                continue;
            }
            let Some(bytes) = self.read_local(&d) else {
                if self.path(&d).exists() {
                    tracing::error!(digest = d, "a module's local file is damaged and the store lacks its bytes");
                }
                continue;
            };
            let _files = self.files().await;
            self.put_chunks(&d, &bytes).await?;
            tracing::info!(digest = d, bytes = bytes.len(), "module bytes copied from the data directory to the store");
            n += 1;
        }
        Ok(n)
    }

    /// Remember a loaded module (in the LRU of `[engine] module_cache_bytes`).
    pub fn cache(&self, module: Arc<Module>) {
        self.cache.insert(&module.digest.clone(), module.clone(), module_cache::weight(&module));
    }

    /// Whether the loaded module for `digest` is in memory (deployed agents hold their own).
    pub fn is_cached(&self, digest: &str) -> bool {
        self.cache.contains(digest)
    }

    /// Delete `tenant`'s module `digest` and free what no other record uses.
    ///
    /// Modules are per-tenant records, but their bytes (the chunks in the store, the local
    /// copy), the compiled artifact and the loaded module are shared by digest: two tenants
    /// uploading the same component share them, and each counts its size in its own
    /// `module_bytes`. So the bytes and the loaded module go when the last record naming
    /// the digest goes (checked under [`Self::files`], which uploads hold until their
    /// record exists).
    pub async fn delete(&self, tenant: &str, digest: &str) -> AgentsResult<()> {
        let _files = self.files().await;
        self.registry.delete(RecordKind::Module, &crate::registry::scoped(tenant, digest)).await?;
        if self.named_by_a_record(digest).await? {
            return Ok(());
        }
        if let Err(e) = self.delete_chunks(digest).await {
            tracing::warn!(digest, error = %e, "cannot remove a deleted module's chunks from the store");
        }
        // Another node may have written a record of the same bytes meanwhile (its upload
        // holds its own node's lock only): then its chunks are written back from the local
        // copy (its upload also checks its set after its record; see `ensure_stored`).
        if self.named_by_a_record(digest).await? {
            if let Some(bytes) = self.read_local(digest) {
                tracing::warn!(digest, "a module was uploaded again while its bytes were deleted; storing them again");
                self.put_chunks(digest, &bytes).await?;
            }
            return Ok(());
        }
        self.forget_local(digest);
        Ok(())
    }

    /// Whether any tenant's module record names `digest`.
    async fn named_by_a_record(&self, digest: &str) -> AgentsResult<bool> {
        let records = self.registry.store().record_list(RecordKind::Module, "").await?;
        Ok(records.iter().any(|(k, _)| k.rsplit_once('/').is_some_and(|(_, d)| d == digest)))
    }

    /// Drop this node's loaded module, compiled artifact and local copy of `digest`.
    fn forget_local(&self, digest: &str) {
        self.cache.remove(digest);
        self.runtime.forget_artifact(digest);
        match std::fs::remove_file(self.path(digest)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                tracing::warn!(digest, error = %e, "cannot remove a deleted module's bytes");
            }
            _ => {}
        }
    }

    /// For a node that learns (from the registry change stream) that another node deleted
    /// a module record: drop this node's loaded module, artifact and local copy of `digest`
    /// if no module record names it any more (the deleting node removed the chunks).
    /// Returns whether they were dropped.
    pub async fn forget_if_unused(&self, digest: &str) -> AgentsResult<bool> {
        let _files = self.files().await;
        if self.named_by_a_record(digest).await? {
            return Ok(false);
        }
        self.forget_local(digest);
        Ok(true)
    }

    /// After an upload wrote its record: make sure the store still holds the chunk set (a
    /// delete of the same digest on another node may have raced with the upload), writing
    /// it again from `bytes` if not.
    pub async fn ensure_stored(&self, digest: &str, bytes: &[u8]) -> AgentsResult<()> {
        if !self.stored_set_present(digest).await? {
            tracing::warn!(digest, "a module's chunks went while it was uploaded; storing them again");
            self.put_chunks(digest, bytes).await?;
        }
        Ok(())
    }

    /// The bytes of the component `digest` as uploaded: the local copy if intact, else
    /// the store's chunks (verified by SHA-256).
    pub async fn bytes(&self, digest: &str) -> AgentsResult<Vec<u8>> {
        self.read_stored(digest).await
    }

    /// Delete every chunk record of `digest`: the set its first chunk names, and whatever
    /// else is stored under the digest (a damaged set).
    async fn delete_chunks(&self, digest: &str) -> AgentsResult<()> {
        let store = self.registry.store();
        let count = match store.record_get(RecordKind::ModuleChunk, &chunk_key(digest, 0)).await? {
            Some((v, _)) => parse_chunk(&v).map_or(0, |(c, _, _)| c),
            None => 0,
        };
        let keys: Vec<String> = (0..count).map(|i| chunk_key(digest, i)).collect();
        store.record_delete_many(RecordKind::ModuleChunk, &keys).await?;
        // What the header did not name (rare: a damaged set): list and delete it too.
        let rest: Vec<String> = store
            .record_list(RecordKind::ModuleChunk, &format!("{digest}/"))
            .await?
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        if !rest.is_empty() {
            store.record_delete_many(RecordKind::ModuleChunk, &rest).await?;
        }
        Ok(())
    }

    /// The loaded module for `digest`: from memory, else its bytes (the local copy if
    /// intact, else the store's chunks, verified, then kept as the local copy) through the
    /// artifact cache. Bytes that are missing or do not match the digest are a
    /// [`ModuleBytesError`] and nothing is compiled.
    pub async fn load(&self, digest: &str) -> AgentsResult<Arc<Module>> {
        if let Some(m) = self.cache.get(digest) {
            return Ok(m);
        }
        let bytes = match self.read_local(digest) {
            Some(b) => b,
            None => {
                let b = self.read_stored(digest).await?;
                if let Err(e) = self.write_local(digest, &b) {
                    tracing::warn!(digest, error = %e, "cannot keep a local copy of a module");
                }
                b
            }
        };
        let m = self.runtime.load(&bytes).await?;
        self.cache(m.clone());
        Ok(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records(digest: &str, bytes: &[u8]) -> Vec<(String, Vec<u8>)> {
        chunks(bytes).into_iter().map(|(i, v)| (chunk_key(digest, i), v)).collect()
    }

    #[test]
    fn chunks_put_back_together_give_the_bytes() {
        for len in [0, 1, CHUNK_BYTES - 1, CHUNK_BYTES, CHUNK_BYTES + 1, 2 * CHUNK_BYTES + 7] {
            let bytes: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let d = digest_of(&bytes);
            let recs = records(&d, &bytes);
            assert_eq!(recs.len(), len.div_ceil(CHUNK_BYTES).max(1), "{len}");
            assert_eq!(recs[0].0, format!("{d}/00000000"));
            assert_eq!(assemble(&d, &recs).unwrap(), bytes, "{len}");
        }
    }

    #[test]
    fn a_missing_altered_or_foreign_chunk_is_a_typed_error() {
        let bytes: Vec<u8> = (0..2 * CHUNK_BYTES + 3).map(|i| (i % 13) as u8).collect();
        let d = digest_of(&bytes);
        let all = records(&d, &bytes);

        let mut gap = all.clone();
        gap.remove(1);
        assert!(matches!(assemble(&d, &gap), Err(ModuleBytesError::MissingChunk { index: 1, count: 3, .. })));
        let mut short = all.clone();
        short.pop();
        assert!(matches!(assemble(&d, &short), Err(ModuleBytesError::MissingChunk { index: 2, count: 3, .. })));
        assert!(matches!(assemble(&d, &[]), Err(ModuleBytesError::Absent { .. })));

        let mut flipped = all.clone();
        let last = flipped[1].1.len() - 1;
        flipped[1].1[last] ^= 1;
        let err = assemble(&d, &flipped).unwrap_err();
        assert!(matches!(err, ModuleBytesError::DigestMismatch { .. }), "{err}");
        assert_eq!(err.code(), "module_digest_mismatch");

        let mut headless = all.clone();
        headless[2].1 = b"garbage".to_vec();
        assert!(matches!(assemble(&d, &headless), Err(ModuleBytesError::MalformedChunk { .. })));

        // Another module's chunks do not pass for this one's.
        let other = b"other bytes";
        let od = digest_of(other);
        let err = assemble(&d, &records(&d, other)).unwrap_err();
        assert!(matches!(err, ModuleBytesError::DigestMismatch { ref actual, .. } if *actual == od), "{err}");
    }
}
