//! `cortex backup --to FILE` (a running node's store, through `GET /v1/admin/backup`) and
//! `cortex restore --from FILE --data DIR` (offline: a data directory rebuilt from an
//! embedded backup) or `--arango URL --database NAME` (an ArangoDB database rebuilt from an
//! ArangoDB backup).
//! A child of the client module: `backup` talks through its [`Conn`].

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, bail};

use super::{Conn, Payload};
use crate::registry::now_ms;
use crate::store::backup::verify;

/// `cortex backup`: stream the backup to `to` (through a temporary file renamed once whole
/// and checked), then print its snapshot point.
pub async fn backup(to: &Path, conn: &Conn) -> anyhow::Result<ExitCode> {
    let mut resp = conn.send(reqwest::Method::GET, "/v1/admin/backup", Payload::None).await?;
    let status = resp.status();
    if !status.is_success() {
        let text = resp.text().await.unwrap_or_default();
        return Err(super::refusal(status, &text));
    }
    let tmp = to.with_extension("partial");
    let mut file = std::io::BufWriter::new(
        crate::fsutil::create_private(&tmp).with_context(|| format!("creating {}", tmp.display()))?,
    );
    while let Some(chunk) = resp.chunk().await.context("the backup stream broke off")? {
        file.write_all(&chunk)?;
    }
    let file = file.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    drop(file);
    let checked = std::fs::File::open(&tmp)
        .map(std::io::BufReader::new)
        .map_err(anyhow::Error::from)
        .and_then(|f| verify(f).map_err(anyhow::Error::from));
    let (info, entries) = match checked {
        Ok(v) => v,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            bail!("the backup did not arrive whole: {e}");
        }
    };
    std::fs::rename(&tmp, to)?;
    if conn.json {
        println!("{}", serde_json::to_string(&info)?);
    } else {
        println!(
            "{}: {entries} entries, snapshot at {} ms (registry seq {}, {} tenant feeds)",
            to.display(),
            info.created_ms,
            info.registry_seq,
            info.feed_heads.len()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `cortex restore`: check `from` whole, then rebuild `data`'s store from it. A data
/// directory with anything in it is refused unless `force` (then its `store/` and local
/// module copies are replaced; its keys and node id stay).
pub fn restore(from: &Path, data: &Path, force: bool) -> anyhow::Result<ExitCode> {
    let open = || {
        std::fs::File::open(from).map(std::io::BufReader::new).with_context(|| format!("opening {}", from.display()))
    };
    let (info, _) = verify(open()?).with_context(|| format!("checking {}", from.display()))?;
    if info.backend != "embedded" {
        bail!(
            "{} is a backup of a {:?} store; only embedded backups restore into a data directory \
             (restore it with --arango URL --database NAME)",
            from.display(),
            info.backend
        );
    }
    let non_empty = data.is_dir() && std::fs::read_dir(data)?.next().is_some();
    if non_empty {
        if !force {
            bail!(
                "{} is not empty: restore into a new directory, or pass --force to replace its store",
                data.display()
            );
        }
        for sub in ["store", "modules"] {
            let p = data.join(sub);
            if p.exists() {
                std::fs::remove_dir_all(&p).with_context(|| format!("removing {}", p.display()))?;
            }
        }
    }
    crate::fsutil::prepare_data_dir(data)?;
    let info = crate::store::restore_embedded(open()?, &data.join("store"))?;
    println!(
        "restored {} into {} (snapshot at {} ms, registry seq {}); start it with the same secrets key and token secret",
        from.display(),
        data.display(),
        info.created_ms,
        info.registry_seq
    );
    Ok(ExitCode::SUCCESS)
}

/// `cortex restore --arango`: check `from` whole, then insert its documents into the
/// database `cfg` names, page by page. A database holding Cortex's documents is refused
/// unless `force` (then Cortex's collections are truncated first).
pub async fn restore_arango(from: &Path, cfg: &crate::config::ArangoConfig, force: bool) -> anyhow::Result<ExitCode> {
    let open = || {
        std::fs::File::open(from).map(std::io::BufReader::new).with_context(|| format!("opening {}", from.display()))
    };
    let (info, entries) = verify(open()?).with_context(|| format!("checking {}", from.display()))?;
    if info.backend != crate::store::arangodb::backup::BACKEND {
        bail!(
            "{} is a backup of a {:?} store; only ArangoDB backups restore into ArangoDB (restore it with --data DIR)",
            from.display(),
            info.backend
        );
    }
    let info = crate::store::arangodb::backup::restore(open()?, cfg, force)
        .await
        .with_context(|| format!("restoring into the database {:?} at {}", cfg.database, cfg.url))?;
    println!(
        "restored {} ({entries} documents) into the database {:?} at {} (snapshot at {} ms, registry seq {}); \
         start the nodes on it with the same secrets key and token secret",
        from.display(),
        cfg.database,
        cfg.url,
        info.created_ms,
        info.registry_seq
    );
    Ok(ExitCode::SUCCESS)
}

/// `cortex backup --to-dir DIR [--keep N]`: a backup into `DIR/cortex-<UTC time>.bak`;
/// once it is whole, all but the newest `keep` backups of the directory are deleted (the
/// names sort in time order). What a CronJob runs: the image has no shell to name files.
pub async fn backup_rotating(dir: &Path, keep: Option<u32>, conn: &Conn) -> anyhow::Result<ExitCode> {
    let to = dir.join(format!("cortex-{}.bak", utc_stamp(now_ms())));
    let code = backup(&to, conn).await?;
    if let Some(keep) = keep {
        for old in rotate(dir, keep as usize)? {
            println!("removed {}", old.display());
        }
    }
    Ok(code)
}

/// Delete all but the newest `keep` `cortex-*.bak` files of `dir`; returns what went.
pub fn rotate(dir: &Path, keep: usize) -> anyhow::Result<Vec<std::path::PathBuf>> {
    let mut backups: Vec<std::path::PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("cortex-") && n.ends_with(".bak"))
        })
        .collect();
    backups.sort();
    let old = backups.len().saturating_sub(keep);
    let gone: Vec<_> = backups.into_iter().take(old).collect();
    for p in &gone {
        std::fs::remove_file(p).with_context(|| format!("removing {}", p.display()))?;
    }
    Ok(gone)
}

/// `YYYYMMDDTHHMMSSZ` of `ms` since the epoch (UTC; sorts in time order).
pub fn utc_stamp(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    let (y, m, d) = crate::civil::from_days(days);
    format!("{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_are_utc_and_rotation_keeps_the_newest() {
        assert_eq!(utc_stamp(0), "19700101T000000Z");
        assert_eq!(utc_stamp(951_782_400_000), "20000229T000000Z");
        assert_eq!(utc_stamp(1_796_637_723_000), "20261207T100203Z");
        let dir = tempfile::tempdir().unwrap();
        for n in ["cortex-20260101T000000Z.bak", "cortex-20260102T000000Z.bak", "cortex-20260103T000000Z.bak"] {
            std::fs::write(dir.path().join(n), b"x").unwrap();
        }
        std::fs::write(dir.path().join("other.bak"), b"x").unwrap();
        let gone = rotate(dir.path(), 2).unwrap();
        assert_eq!(gone, vec![dir.path().join("cortex-20260101T000000Z.bak")]);
        assert!(dir.path().join("cortex-20260103T000000Z.bak").exists());
        assert!(dir.path().join("other.bak").exists());
        assert!(rotate(dir.path(), 5).unwrap().is_empty());
    }
}
