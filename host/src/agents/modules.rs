//! Uploaded modules: their bytes on disk (`DATA/modules/<digest>.wasm`), the loaded modules
//! in memory (an LRU), and deletion of what no record uses any more.

use std::path::PathBuf;
use std::sync::Arc;

use super::error::{AgentsError, AgentsResult};
use crate::registry::Registry;
use crate::runtime::{Module, ModuleCache, Runtime, module_cache};
use crate::store::RecordKind;

/// The modules of this node.
pub struct Modules {
    dir: PathBuf,
    cache: ModuleCache,
    /// Held while module files are written or freed (see [`Modules::delete`]).
    files: tokio::sync::Mutex<()>,
    runtime: Arc<Runtime>,
    registry: Registry,
}

impl std::fmt::Debug for Modules {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Modules").field("dir", &self.dir).finish_non_exhaustive()
    }
}

impl Modules {
    /// Modules kept in `dir` (created, private), at most `cache_bytes` of them loaded.
    pub fn new(dir: PathBuf, cache_bytes: u64, runtime: Arc<Runtime>, registry: Registry) -> AgentsResult<Self> {
        crate::fsutil::private_dir(&dir).map_err(|e| AgentsError::Internal(format!("modules dir: {e}")))?;
        Ok(Self { dir, cache: ModuleCache::new(cache_bytes), files: tokio::sync::Mutex::new(()), runtime, registry })
    }

    fn path(&self, digest: &str) -> PathBuf {
        self.dir.join(format!("{digest}.wasm"))
    }

    /// Held by an upload from saving its bytes until its record is written, and by a delete
    /// from removing the record until the files are freed: a delete never frees the files of
    /// a record being written.
    pub async fn files(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.files.lock().await
    }

    /// Keep an uploaded module's bytes (durably, before its record is written).
    pub fn save_bytes(&self, digest: &str, bytes: &[u8]) -> AgentsResult<()> {
        let path = self.path(digest);
        if path.exists() {
            return Ok(());
        }
        let tmp = self.dir.join(format!("{digest}.{}.tmp", std::process::id()));
        let write = || -> std::io::Result<()> {
            use std::io::Write;
            let mut f = crate::fsutil::create_private(&tmp)?;
            f.write_all(bytes)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)
        };
        write().map_err(|e| AgentsError::Internal(format!("saving module {digest}: {e}")))
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
    /// Modules are per-tenant records, but their bytes (`DATA/modules/<digest>.wasm`), the
    /// compiled artifact and the loaded module are shared by digest: two tenants uploading
    /// the same component share them, and each counts its size in its own `module_bytes`.
    /// So the files and the loaded module go when the last record naming the digest goes
    /// (checked under [`Self::files`], which uploads hold until their record exists).
    pub async fn delete(&self, tenant: &str, digest: &str) -> AgentsResult<()> {
        let _files = self.files().await;
        self.registry.delete(RecordKind::Module, &crate::registry::scoped(tenant, digest)).await?;
        let records = self.registry.store().record_list(RecordKind::Module, "").await?;
        if records.iter().any(|(k, _)| k.rsplit_once('/').is_some_and(|(_, d)| d == digest)) {
            return Ok(());
        }
        self.cache.remove(digest);
        self.runtime.forget_artifact(digest);
        match std::fs::remove_file(self.path(digest)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                tracing::warn!(digest, error = %e, "cannot remove a deleted module's bytes");
            }
            _ => {}
        }
        Ok(())
    }

    /// The bytes of the component `digest` as uploaded (read from the file it is saved
    /// under); `NotFound` when this node has none for it.
    pub async fn bytes(&self, digest: &str) -> AgentsResult<Vec<u8>> {
        let path = self.path(digest);
        let read = tokio::task::spawn_blocking(move || std::fs::read(path))
            .await
            .map_err(|e| AgentsError::Internal(format!("reading module {digest}: {e}")))?;
        match read {
            Ok(bytes) => Ok(bytes),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(AgentsError::NotFound(format!("module {digest} has no bytes on this node")))
            }
            Err(e) => Err(AgentsError::Internal(format!("module {digest} is registered but unreadable: {e}"))),
        }
    }

    /// The loaded module for `digest` (from memory, else from disk through the artifact cache).
    pub async fn load(&self, digest: &str) -> AgentsResult<Arc<Module>> {
        if let Some(m) = self.cache.get(digest) {
            return Ok(m);
        }
        let bytes = std::fs::read(self.path(digest))
            .map_err(|e| AgentsError::Internal(format!("module {digest} is registered but unreadable: {e}")))?;
        let m = self.runtime.load(&bytes).await?;
        self.cache(m.clone());
        Ok(m)
    }
}
