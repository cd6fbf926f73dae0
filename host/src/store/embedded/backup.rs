//! Backup and restore of the embedded store (see [`crate::store::backup`] for the file).
//!
//! A backup is one redb read transaction: a consistent snapshot of every table at one
//! commit, read while writers go on (redb's readers never block its writer). A restore
//! writes every entry into a new file in one write transaction, committed only once the
//! file's checksum matched.

use std::io::{Read, Write};
use std::path::Path;

use redb::{Database, ReadTransaction, ReadableDatabase, ReadableTable, TableDefinition, TableHandle};

use super::{AUDIT, DOCUMENTS, EDGE_COUNT, EmbeddedStore, RECORDS, TENANT_AUDIT, USAGE, backend, feed, graph};
use crate::store::backup::{BackupError, Frame, FrameReader, FrameWriter, SnapshotInfo, StoreSnapshot};
use crate::store::{REGISTRY_FEED, StoreError};

/// Entries inserted per table open while restoring.
const BATCH: usize = 4096;

/// Calls `$f!(def)` for every table of the store; a table missing here fails a backup.
macro_rules! each_table {
    ($m:ident, $($arg:expr),*) => {{
        $m!(DOCUMENTS, $($arg),*);
        $m!(USAGE, $($arg),*);
        $m!(EDGE_COUNT, $($arg),*);
        $m!(RECORDS, $($arg),*);
        $m!(AUDIT, $($arg),*);
        $m!(TENANT_AUDIT, $($arg),*);
        $m!(feed::FEED, $($arg),*);
        $m!(feed::HEADS, $($arg),*);
        $m!(graph::OUT, $($arg),*);
        $m!(graph::IN, $($arg),*);
    }};
}

fn table_names() -> Vec<&'static str> {
    let mut v = Vec::new();
    macro_rules! name {
        ($def:expr, $v:expr) => {
            $v.push($def.name())
        };
    }
    each_table!(name, v);
    v
}

fn dump<K: redb::Key + 'static, V: redb::Value + 'static>(
    txn: &ReadTransaction,
    def: TableDefinition<K, V>,
    w: &mut FrameWriter<'_>,
) -> Result<(), BackupError> {
    let table = match txn.open_table(def) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(()),
        Err(e) => return Err(backend(e).into()),
    };
    w.table(def.name())?;
    for item in table.iter().map_err(backend)? {
        let (k, v) = item.map_err(backend)?;
        let (k, v) = (k.value(), v.value());
        w.entry(K::as_bytes(&k).as_ref(), V::as_bytes(&v).as_ref())?;
    }
    Ok(())
}

fn load<K: redb::Key + 'static, V: redb::Value + 'static>(
    txn: &redb::WriteTransaction,
    def: TableDefinition<K, V>,
    entries: &[(Vec<u8>, Vec<u8>)],
) -> Result<(), BackupError> {
    let mut table = txn.open_table(def).map_err(backend)?;
    for (k, v) in entries {
        table.insert(K::from_bytes(k), V::from_bytes(v)).map_err(backend)?;
    }
    Ok(())
}

/// A read transaction of an [`EmbeddedStore`], with where it stands.
pub struct EmbeddedSnapshot {
    txn: ReadTransaction,
    info: SnapshotInfo,
}

impl EmbeddedStore {
    /// A consistent snapshot of the whole store, taken now.
    pub fn snapshot(&self) -> Result<EmbeddedSnapshot, StoreError> {
        let txn = self.db.begin_read().map_err(backend)?;
        let mut info = SnapshotInfo {
            backend: "embedded".into(),
            created_ms: crate::registry::now_ms(),
            ..SnapshotInfo::default()
        };
        if let Ok(heads) = txn.open_table(feed::HEADS) {
            for item in heads.iter().map_err(backend)? {
                let (k, v) = item.map_err(backend)?;
                if k.value() == REGISTRY_FEED {
                    info.registry_seq = v.value();
                } else {
                    info.feed_heads.insert(k.value().to_owned(), v.value());
                }
            }
        }
        Ok(EmbeddedSnapshot { txn, info })
    }
}

impl StoreSnapshot for EmbeddedSnapshot {
    fn info(&self) -> &SnapshotInfo {
        &self.info
    }

    fn write_to(self: Box<Self>, out: &mut dyn Write) -> Result<u64, BackupError> {
        let known = table_names();
        for t in self.txn.list_tables().map_err(backend)? {
            if !known.contains(&t.name()) {
                return Err(BackupError::Invalid(format!("the store has a table backups do not know: {}", t.name())));
            }
        }
        let mut w = FrameWriter::new(out, &self.info)?;
        macro_rules! one {
            ($def:expr, $txn:expr, $w:expr) => {
                dump($txn, $def, $w)?
            };
        }
        each_table!(one, &self.txn, &mut w);
        w.finish()
    }
}

/// Rebuild the store directory `dir` (it must not hold a store file) from the backup read
/// from `input`: nothing is committed unless the whole file reads back and its checksum
/// matches (then the new file is removed). Returns the backup's header.
pub fn restore(input: impl Read, dir: &Path) -> Result<SnapshotInfo, BackupError> {
    crate::fsutil::private_dir(dir)?;
    let file = dir.join("documents.redb");
    if file.exists() {
        return Err(BackupError::Invalid(format!("{} exists already", file.display())));
    }
    crate::fsutil::ensure_private_file(&file)?;
    let result = (|| {
        let db = Database::create(&file).map_err(backend)?;
        let mut r = FrameReader::new(input)?;
        let txn = db.begin_write().map_err(backend)?;
        let mut table: Option<String> = None;
        let mut batch: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        let flush = |table: &Option<String>, batch: &mut Vec<(Vec<u8>, Vec<u8>)>| -> Result<(), BackupError> {
            let Some(name) = table else {
                return if batch.is_empty() {
                    Ok(())
                } else {
                    Err(BackupError::Invalid("an entry before any table".into()))
                };
            };
            let mut done = false;
            macro_rules! apply {
                ($def:expr, $name:expr, $txn:expr, $batch:expr, $done:expr) => {
                    if $def.name() == $name {
                        load($txn, $def, $batch)?;
                        $done = true;
                    }
                };
            }
            each_table!(apply, name.as_str(), &txn, batch, done);
            if !done {
                return Err(BackupError::Invalid(format!("unknown table {name}")));
            }
            batch.clear();
            Ok(())
        };
        loop {
            match r.next_frame()? {
                Frame::Table(name) => {
                    flush(&table, &mut batch)?;
                    // Create it even when it has no entries.
                    table = Some(name);
                    flush(&table, &mut batch)?;
                }
                Frame::Entry(k, v) => {
                    batch.push((k, v));
                    if batch.len() >= BATCH {
                        flush(&table, &mut batch)?;
                    }
                }
                Frame::End => {
                    flush(&table, &mut batch)?;
                    break;
                }
            }
        }
        txn.commit().map_err(backend)?;
        Ok(r.info)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&file);
    }
    result
}
