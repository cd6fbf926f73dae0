//! Module uploads: admitted at once when small, compiled in the background when larger
//! than `[modules] async_compile_bytes` (the record says `compiling` until it is `ready`
//! or `failed`, and a restart resumes what was compiling, on any node: the bytes are in the
//! store before the record); names and tags.

use std::sync::Arc;

use super::Agents;
use super::error::{AgentsError, AgentsResult};
use super::module_ref::DEFAULT_TAG;
use super::tenants::CachedTenant;
use crate::names::{NameKind, check};
use crate::registry::module_meta::{TAG_RULE, valid_tag};
use crate::registry::{ModuleFailure, ModuleRecord, ModuleStatus, ModuleTag, now_ms, scoped};
use crate::runtime::{Module, World, digest};
use crate::store::{RecordKind, StoreError};

/// The name and tag an upload or a tag request gives a module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Label {
    /// The module name (the one name rule).
    pub name: String,
    /// The tag ([`TAG_RULE`]).
    pub tag: String,
}

impl Label {
    /// The label of `name` and `tag` (default `latest`); a tag without a name is refused.
    pub fn of(name: Option<String>, tag: Option<String>) -> AgentsResult<Option<Self>> {
        let Some(name) = name else {
            return match tag {
                Some(_) => Err(AgentsError::Invalid("a tag needs a name (name=...&tag=...)".into())),
                None => Ok(None),
            };
        };
        check(NameKind::Module, &name).map_err(|e| AgentsError::Invalid(e.to_string()))?;
        let tag = tag.unwrap_or_else(|| DEFAULT_TAG.to_owned());
        if !valid_tag(&tag) {
            return Err(AgentsError::Invalid(format!(
                "tag {:?} must match {TAG_RULE}",
                tag.chars().take(80).collect::<String>()
            )));
        }
        Ok(Some(Self { name, tag }))
    }
}

/// What an upload did.
#[derive(Debug)]
pub enum Uploaded {
    /// A new module, compiled and admitted (201).
    Created(ModuleRecord),
    /// The tenant had these bytes already (200; 202 while they still compile).
    Existing(ModuleRecord),
    /// A new module, compiling in the background (202).
    Compiling(ModuleRecord),
}

/// The record of an admitted module.
fn ready_record(tenant: &str, d: &str, size: u64, module: &Module) -> ModuleRecord {
    ModuleRecord {
        tenant: tenant.to_owned(),
        digest: d.to_owned(),
        size,
        world: world_of(module),
        imports: module.shape.imports.clone(),
        exports: module.shape.exports.clone(),
        warnings: module.shape.warnings(),
        created_ms: now_ms(),
        status: ModuleStatus::Ready,
        error: None,
        tags: Vec::new(),
    }
}

fn world_of(module: &Module) -> String {
    match module.shape.world {
        World::Agent => "agent".into(),
        World::Tool => "tool".into(),
    }
}

impl Agents {
    /// Upload `bytes` as a module of tenant `t`, labelled `label` by `by`. The caller holds
    /// the tenant's write lock (quota and tags are checked and moved under it).
    pub async fn upload(
        self: &Arc<Self>,
        t: &CachedTenant,
        bytes: &[u8],
        label: Option<&Label>,
        by: &str,
    ) -> AgentsResult<Uploaded> {
        let d = digest(bytes);
        let key = scoped(&t.name, &d);
        let existing = self.registry.get::<ModuleRecord>(RecordKind::Module, &key).await?;
        if let Some((mut rec, rev)) = existing.clone().filter(|(m, _)| m.status != ModuleStatus::Failed) {
            // The same bytes again (while they compile too: the upload joins that compile).
            if let Some(l) = label {
                self.label(&mut rec, l, by).await?;
                self.put_module(&key, &rec, rev).await?;
            }
            return Ok(Uploaded::Existing(rec));
        }
        // A failed module uploaded again is compiled again, in place of its record.
        let expected = existing.as_ref().map_or(0, |(_, rev)| *rev);
        let all = self.registry.list::<ModuleRecord>(RecordKind::Module, &scoped(&t.name, "")).await?;
        let used: u64 = all.iter().filter(|m| m.digest != d).map(|m| m.size).sum();
        let size = bytes.len() as u64;
        if used + size > t.quotas.module_bytes {
            self.metrics.refused(&t.name, "module_quota");
            return Err(AgentsError::OverQuota {
                code: "module_quota",
                message: format!(
                    "modules would take {} bytes, over the quota of {}",
                    used + size,
                    t.quotas.module_bytes
                ),
                retry_after: 60,
            });
        }
        let background = bytes.len() > self.config.modules.async_compile_bytes;
        let (mut rec, module) = if background {
            // What is not a component at all is refused at once.
            crate::runtime::validate::check_header(bytes)?;
            let rec = ModuleRecord {
                tenant: t.name.clone(),
                digest: d.clone(),
                size,
                world: String::new(),
                imports: Vec::new(),
                exports: Vec::new(),
                warnings: Vec::new(),
                created_ms: now_ms(),
                status: ModuleStatus::Compiling,
                error: None,
                tags: Vec::new(),
            };
            (rec, None)
        } else {
            let module = self.runtime.load(bytes).await?;
            (ready_record(&t.name, &d, size, &module), Some(module))
        };
        if let Some(l) = label {
            self.label(&mut rec, l, by).await?;
        }
        // The bytes (chunks in the store, then the local copy) before the record: a node
        // that sees the record can read them. From the bytes to the record, a concurrent
        // delete of the same digest (by another tenant) cannot free the bytes this record
        // is about to name.
        let files = self.modules.files().await;
        self.modules.save_bytes(&d, bytes).await?;
        if let Some(m) = module {
            self.modules.cache(m);
        }
        match self.registry.put(RecordKind::Module, &key, &rec, Some(expected)).await {
            Ok(_) => {}
            // A concurrent upload of the same bytes won: same record, same answer.
            Err(StoreError::Conflict { .. }) => return Ok(Uploaded::Existing(rec)),
            Err(e) => return Err(e.into()),
        }
        drop(files);
        self.modules.ensure_stored(&d, bytes).await?;
        if background {
            self.compile_in_background(t.name.clone(), d);
            Ok(Uploaded::Compiling(rec))
        } else {
            Ok(Uploaded::Created(rec))
        }
    }

    /// Put `label` on `tenant`'s module `reference` (moved from the module that had it).
    /// The caller holds the tenant's write lock.
    pub async fn tag_module(
        &self,
        tenant: &str,
        reference: &str,
        label: &Label,
        by: &str,
    ) -> AgentsResult<ModuleRecord> {
        let found = self.resolve_module(tenant, reference).await?;
        let key = scoped(tenant, &found.digest);
        let Some((mut rec, rev)) = self.registry.get::<ModuleRecord>(RecordKind::Module, &key).await? else {
            return Err(AgentsError::NotFound(format!("module {reference} not found")));
        };
        self.label(&mut rec, label, by).await?;
        self.put_module(&key, &rec, rev).await?;
        Ok(rec)
    }

    async fn put_module(&self, key: &str, rec: &ModuleRecord, rev: u64) -> AgentsResult<()> {
        match self.registry.put(RecordKind::Module, key, rec, Some(rev)).await {
            Ok(_) => Ok(()),
            Err(StoreError::Conflict { .. }) => Err(AgentsError::Conflict {
                code: "module_changed",
                message: format!("module {} changed meanwhile; try again", rec.digest),
            }),
            Err(e) => Err(e.into()),
        }
    }

    /// Put `label` on `rec`, taking it off the module that had it (written here; `rec` is the
    /// caller's to write).
    async fn label(&self, rec: &mut ModuleRecord, label: &Label, by: &str) -> AgentsResult<()> {
        let is = |t: &ModuleTag| t.name == label.name && t.tag == label.tag;
        if rec.tags.iter().any(is) {
            return Ok(());
        }
        let prefix = scoped(&rec.tenant, "");
        for (k, mut other, rev) in self.registry.list_revisions::<ModuleRecord>(RecordKind::Module, &prefix).await? {
            if other.digest != rec.digest && other.tags.iter().any(is) {
                other.tags.retain(|t| !is(t));
                self.put_module(&k, &other, rev).await?;
            }
        }
        rec.tags.push(ModuleTag {
            name: label.name.clone(),
            tag: label.tag.clone(),
            by: by.to_owned(),
            at_ms: now_ms(),
        });
        Ok(())
    }

    /// Compile `tenant`'s module `d` (its bytes: the local copy, else the store's) in the
    /// background and record the result; bounded by the compile limits and concurrency as
    /// any load.
    fn compile_in_background(self: &Arc<Self>, tenant: String, d: String) {
        let this = self.clone();
        tokio::spawn(async move {
            let result = this.modules.load(&d).await;
            if let Err(e) = this.finish_compile(&tenant, &d, result).await {
                tracing::error!(tenant, digest = d, error = %e, "cannot record a module's compilation");
            }
        });
    }

    /// Record how the background compilation of `tenant`'s module `d` ended (unless the
    /// module was deleted meanwhile).
    async fn finish_compile(&self, tenant: &str, d: &str, result: AgentsResult<Arc<Module>>) -> AgentsResult<()> {
        let key = scoped(tenant, d);
        loop {
            let Some((mut rec, rev)) = self.registry.get::<ModuleRecord>(RecordKind::Module, &key).await? else {
                return Ok(());
            };
            if rec.status != ModuleStatus::Compiling {
                return Ok(());
            }
            match &result {
                Ok(m) => {
                    let ready = ready_record(tenant, d, rec.size, m);
                    rec = ModuleRecord { created_ms: rec.created_ms, tags: rec.tags, ..ready };
                }
                Err(e) => {
                    let code = match e {
                        AgentsError::Module(l) => l.code(),
                        AgentsError::ModuleBytes(b) => b.code(),
                        _ => "internal",
                    };
                    tracing::info!(tenant, digest = d, code, error = %e, "a module failed to compile");
                    rec.status = ModuleStatus::Failed;
                    rec.error = Some(ModuleFailure { code: code.to_owned(), message: e.to_string() });
                }
            }
            match self.registry.put(RecordKind::Module, &key, &rec, Some(rev)).await {
                // A tag moved meanwhile: read the record again.
                Err(StoreError::Conflict { .. }) => continue,
                other => return other.map(|_| ()).map_err(Into::into),
            }
        }
    }

    /// At start: copy to the store the bytes of modules this node has only as local files
    /// (a data directory from before the store held them; see
    /// [`super::Modules::share_local_files`]), then compile again every module a stopped
    /// server left `compiling`.
    pub(super) async fn resume_compiles(self: &Arc<Self>) -> AgentsResult<usize> {
        let shared = self.modules.share_local_files().await?;
        if shared > 0 {
            tracing::info!(modules = shared, "module bytes migrated from the data directory to the store");
        }
        let all = self.registry.list::<ModuleRecord>(RecordKind::Module, "").await?;
        let mut n = 0;
        for m in all.into_iter().filter(|m| m.status == ModuleStatus::Compiling) {
            tracing::info!(tenant = m.tenant, digest = m.digest, "resuming an interrupted module compilation");
            self.compile_in_background(m.tenant, m.digest);
            n += 1;
        }
        Ok(n)
    }
}
