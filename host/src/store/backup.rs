//! The backup file: a consistent snapshot of a store, streamed, with a checksum.
//!
//! Layout: the line `CORTEX-BACKUP 1`, one line of JSON ([`SnapshotInfo`]), then frames
//! (`T` + u16 length + a table name: the entries that follow belong to that table; `E` + u32
//! length + key bytes + u32 length + value bytes: one entry; `Z`: the end), then the 32-byte
//! SHA-256 of every byte before it. Lengths are big-endian. Written by
//! [`StoreSnapshot::write_to`], checked by [`verify`], applied by
//! [`crate::store::EmbeddedStore`]'s restore.

use std::collections::BTreeMap;
use std::io::{Read, Write};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The first line of a backup file.
pub const MAGIC: &[u8] = b"CORTEX-BACKUP 1\n";

/// Longest header line read.
const MAX_HEADER: usize = 16 << 20;

/// Largest key or value of an entry read.
const MAX_ENTRY: u32 = 1 << 30;

/// Where a snapshot was taken: every write acknowledged before it is in the backup, none
/// after it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotInfo {
    /// The backend (`embedded`).
    pub backend: String,
    /// When the snapshot's read transaction began (ms since the epoch).
    pub created_ms: u64,
    /// The head of the registry change stream in the snapshot.
    pub registry_seq: u64,
    /// Each tenant's change-feed head in the snapshot: the document writes it holds.
    pub feed_heads: BTreeMap<String, u64>,
}

impl SnapshotInfo {
    /// The `x-cortex-snapshot` header's value: `created_ms=...; registry_seq=...`.
    pub fn header_value(&self) -> String {
        format!("created_ms={}; registry_seq={}", self.created_ms, self.registry_seq)
    }
}

/// Why a backup could not be written, read or restored.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// Reading or writing failed.
    #[error("backup i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The file is not a Cortex backup, is cut short, or its checksum does not match.
    #[error("not a valid backup file: {0}")]
    Invalid(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] super::StoreError),
}

/// A consistent, point-in-time view of a store, written out without blocking writers.
pub trait StoreSnapshot: Send {
    /// Where it was taken.
    fn info(&self) -> &SnapshotInfo;
    /// Write the whole backup file to `out`; returns the bytes written.
    fn write_to(self: Box<Self>, out: &mut dyn Write) -> Result<u64, BackupError>;
}

/// Writes frames and the checksum.
pub struct FrameWriter<'w> {
    out: &'w mut dyn Write,
    hash: Sha256,
    written: u64,
}

impl<'w> FrameWriter<'w> {
    /// Start a file on `out` with `info` as its header.
    pub fn new(out: &'w mut dyn Write, info: &SnapshotInfo) -> Result<Self, BackupError> {
        let mut w = Self { out, hash: Sha256::new(), written: 0 };
        w.put(MAGIC)?;
        let mut line = serde_json::to_vec(info).map_err(|e| BackupError::Invalid(e.to_string()))?;
        line.push(b'\n');
        w.put(&line)?;
        Ok(w)
    }

    fn put(&mut self, b: &[u8]) -> Result<(), BackupError> {
        self.hash.update(b);
        self.out.write_all(b)?;
        self.written += b.len() as u64;
        Ok(())
    }

    /// The entries that follow belong to table `name`.
    pub fn table(&mut self, name: &str) -> Result<(), BackupError> {
        let len = u16::try_from(name.len()).map_err(|_| BackupError::Invalid("table name too long".into()))?;
        self.put(b"T")?;
        self.put(&len.to_be_bytes())?;
        self.put(name.as_bytes())
    }

    /// One entry.
    pub fn entry(&mut self, key: &[u8], value: &[u8]) -> Result<(), BackupError> {
        self.put(b"E")?;
        for part in [key, value] {
            let len = u32::try_from(part.len()).map_err(|_| BackupError::Invalid("entry too large".into()))?;
            self.put(&len.to_be_bytes())?;
            self.put(part)?;
        }
        Ok(())
    }

    /// End the file: the end frame and the checksum. Returns the bytes written.
    pub fn finish(mut self) -> Result<u64, BackupError> {
        self.put(b"Z")?;
        let sum = self.hash.clone().finalize();
        self.out.write_all(&sum)?;
        self.out.flush()?;
        Ok(self.written + 32)
    }
}

/// One frame read back.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    /// A table starts.
    Table(String),
    /// An entry of the current table.
    Entry(Vec<u8>, Vec<u8>),
    /// The end; the checksum matched.
    End,
}

/// Reads a backup file, hashing as it goes.
pub struct FrameReader<R: Read> {
    input: R,
    hash: Sha256,
    /// The header.
    pub info: SnapshotInfo,
}

impl<R: Read> FrameReader<R> {
    /// Read the magic line and the header.
    pub fn new(input: R) -> Result<Self, BackupError> {
        let mut r = Self { input, hash: Sha256::new(), info: SnapshotInfo::default() };
        let mut magic = [0u8; MAGIC.len()];
        r.take(&mut magic)?;
        if magic != MAGIC {
            return Err(BackupError::Invalid("it does not start with CORTEX-BACKUP 1".into()));
        }
        let mut line = Vec::new();
        loop {
            let mut b = [0u8; 1];
            r.take(&mut b)?;
            if b[0] == b'\n' {
                break;
            }
            line.push(b[0]);
            if line.len() > MAX_HEADER {
                return Err(BackupError::Invalid("header line too long".into()));
            }
        }
        r.info = serde_json::from_slice(&line).map_err(|e| BackupError::Invalid(format!("header: {e}")))?;
        Ok(r)
    }

    fn take(&mut self, buf: &mut [u8]) -> Result<(), BackupError> {
        self.input.read_exact(buf).map_err(|e| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => BackupError::Invalid("the file is cut short".into()),
            _ => BackupError::Io(e),
        })?;
        self.hash.update(&*buf);
        Ok(())
    }

    fn bytes(&mut self, len: usize) -> Result<Vec<u8>, BackupError> {
        let mut v = vec![0u8; len];
        self.take(&mut v)?;
        Ok(v)
    }

    fn u32(&mut self) -> Result<u32, BackupError> {
        let mut b = [0u8; 4];
        self.take(&mut b)?;
        Ok(u32::from_be_bytes(b))
    }

    /// The next frame; [`Frame::End`] only once the checksum matched.
    pub fn next_frame(&mut self) -> Result<Frame, BackupError> {
        let mut tag = [0u8; 1];
        self.take(&mut tag)?;
        match tag[0] {
            b'T' => {
                let mut b = [0u8; 2];
                self.take(&mut b)?;
                let name = self.bytes(usize::from(u16::from_be_bytes(b)))?;
                String::from_utf8(name).map(Frame::Table).map_err(|_| BackupError::Invalid("table name".into()))
            }
            b'E' => {
                let mut parts = Vec::with_capacity(2);
                for _ in 0..2 {
                    let len = self.u32()?;
                    if len > MAX_ENTRY {
                        return Err(BackupError::Invalid("entry too large".into()));
                    }
                    parts.push(self.bytes(len as usize)?);
                }
                let v = parts.pop().unwrap_or_default();
                let k = parts.pop().unwrap_or_default();
                Ok(Frame::Entry(k, v))
            }
            b'Z' => {
                let want = self.hash.clone().finalize();
                let mut got = [0u8; 32];
                self.input.read_exact(&mut got).map_err(|_| BackupError::Invalid("the checksum is missing".into()))?;
                if want.as_slice() != got {
                    return Err(BackupError::Invalid("the checksum does not match: the file is damaged".into()));
                }
                Ok(Frame::End)
            }
            t => Err(BackupError::Invalid(format!("unknown frame {t:#04x}"))),
        }
    }
}

/// Read a whole backup file and check its checksum; returns its header and entry count.
pub fn verify(input: impl Read) -> Result<(SnapshotInfo, u64), BackupError> {
    let mut r = FrameReader::new(input)?;
    let mut n = 0;
    loop {
        match r.next_frame()? {
            Frame::Table(_) => {}
            Frame::Entry(..) => n += 1,
            Frame::End => return Ok((r.info, n)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_damage_or_truncation_is_refused() {
        let info = SnapshotInfo { backend: "embedded".into(), created_ms: 5, registry_seq: 7, ..Default::default() };
        let mut buf = Vec::new();
        let mut w = FrameWriter::new(&mut buf, &info).unwrap();
        w.table("records").unwrap();
        w.entry(b"k", b"v").unwrap();
        w.entry(b"", b"").unwrap();
        let n = w.finish().unwrap();
        assert_eq!(n, buf.len() as u64);
        let (back, entries) = verify(&buf[..]).unwrap();
        assert_eq!((back, entries), (info, 2));
        let mut damaged = buf.clone();
        let at = damaged.len() - 40;
        damaged[at] ^= 1;
        assert!(matches!(verify(&damaged[..]), Err(BackupError::Invalid(_))));
        assert!(matches!(verify(&buf[..buf.len() - 1]), Err(BackupError::Invalid(_))));
        assert!(matches!(verify(&b"nope"[..]), Err(BackupError::Invalid(_))));
    }
}
