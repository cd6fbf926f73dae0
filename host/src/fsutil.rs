//! Data at rest: the data directory and everything Cortex writes in it are the owner's only
//! (directories 0700, files 0600), whatever the process umask. The store file holds every
//! tenant's documents, key hashes and audit; modules and compiled artifacts are tenants'
//! code. Other users of the machine read none of it.
//!
//! Modes are given when a file or directory is created and set again right after (a umask
//! can only remove bits, and a file that already existed keeps its mode when opened).
//! [`prepare_data_dir`] also tightens what an older version left readable.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::Path;

/// Mode of directories under the data directory.
pub const DIR_MODE: u32 = 0o700;
/// Mode of files under the data directory.
pub const FILE_MODE: u32 = 0o600;

/// What Cortex keeps in the data directory, tightened at start by [`prepare_data_dir`]
/// (anything else there is left alone).
const OWN_ENTRIES: [&str; 6] = ["store", "modules", "cache", "jwt-hs256.secret", "secrets.key", "node-id"];

#[cfg(unix)]
fn set_mode(path: &Path, mode: u32) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

#[cfg(not(unix))]
fn set_mode(_path: &Path, _mode: u32) -> io::Result<()> {
    Ok(())
}

/// Create `dir` and any missing parents owner-only (0700). Directories that existed keep
/// their mode (the data directory's own are tightened once, by [`prepare_data_dir`]).
pub fn private_dir(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut b, DIR_MODE);
    b.create(dir)
}

/// Create (or truncate) `path` for writing, owner-only (0600) even if it existed before.
pub fn create_private(path: &Path) -> io::Result<File> {
    let mut opts = OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, FILE_MODE);
    let f = opts.open(path)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        f.set_permissions(std::fs::Permissions::from_mode(FILE_MODE))?;
    }
    Ok(f)
}

/// Create an empty file at `path` owner-only if there is none (an existing one is made
/// 0600 and kept): for files a library opens itself, such as the redb store.
pub fn ensure_private_file(path: &Path) -> io::Result<()> {
    let mut opts = OpenOptions::new();
    opts.write(true).create(true).truncate(false);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, FILE_MODE);
    opts.open(path)?;
    set_mode(path, FILE_MODE)
}

/// Remove the group and other bits from `path` and, for a directory, from everything in it
/// (symbolic links are neither followed nor changed). Returns how many entries changed.
pub fn tighten(path: &Path) -> io::Result<u64> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    if meta.file_type().is_symlink() {
        return Ok(0);
    }
    let mut changed = 0;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            set_mode(path, mode & !0o077)?;
            changed += 1;
        }
    }
    if meta.is_dir() {
        for entry in std::fs::read_dir(path)? {
            changed += tighten(&entry?.path())?;
        }
    }
    Ok(changed)
}

/// Create the data directory owner-only, or make an existing one owner-only, and tighten
/// what Cortex keeps in it (`store/`, `modules/`, `cache/`, the development secret), which
/// older versions created with the umask's modes. A directory with the sticky bit (a
/// shared one such as `/tmp`) keeps its own mode: only Cortex's entries in it are changed.
pub fn prepare_data_dir(dir: &Path) -> io::Result<()> {
    let existed = dir.is_dir();
    if !existed {
        return private_dir(dir);
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir)?.permissions().mode();
        if mode & 0o1000 == 0 && mode & 0o077 != 0 {
            set_mode(dir, mode & 0o7700)?;
            tracing::warn!(dir = %dir.display(), "the data directory was readable by others; it is owner-only now");
        }
    }
    let mut changed = 0;
    for name in OWN_ENTRIES {
        changed += tighten(&dir.join(name))?;
    }
    if changed > 0 {
        tracing::warn!(dir = %dir.display(), entries = changed, "files of the data directory were readable by others; they are owner-only now");
    }
    Ok(())
}

#[cfg(all(test, unix))]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[allow(clippy::unwrap_used)]
    fn mode(p: &Path) -> u32 {
        std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn existing_data_dirs_are_tightened_and_other_entries_left_alone() {
        let root = tempfile::tempdir().unwrap();
        let data = root.path().join("data");
        std::fs::create_dir_all(data.join("store")).unwrap();
        std::fs::create_dir_all(data.join("cache/abc")).unwrap();
        std::fs::write(data.join("store/documents.redb"), b"x").unwrap();
        std::fs::write(data.join("cache/abc/d.cwasm"), b"x").unwrap();
        std::fs::write(data.join("notes.txt"), b"mine").unwrap();
        for p in ["", "store", "store/documents.redb", "cache", "cache/abc", "cache/abc/d.cwasm", "notes.txt"] {
            set_mode(&data.join(p), if data.join(p).is_dir() { 0o755 } else { 0o644 }).unwrap();
        }
        std::os::unix::fs::symlink("/etc/hostname", data.join("cache/link")).unwrap();
        prepare_data_dir(&data).unwrap();
        assert_eq!(mode(&data), 0o700);
        for p in ["store", "cache", "cache/abc"] {
            assert_eq!(mode(&data.join(p)), 0o700, "{p}");
        }
        for p in ["store/documents.redb", "cache/abc/d.cwasm"] {
            assert_eq!(mode(&data.join(p)), 0o600, "{p}");
        }
        assert_eq!(mode(&data.join("notes.txt")), 0o644, "not Cortex's: left alone");
        assert_ne!(mode(Path::new("/etc/hostname")) & 0o044, 0, "a link is not followed");
    }

    #[test]
    fn new_dirs_and_files_are_owner_only_whatever_they_were() {
        let root = tempfile::tempdir().unwrap();
        let d = root.path().join("a/b");
        private_dir(&d).unwrap();
        assert_eq!(mode(&root.path().join("a")), 0o700);
        assert_eq!(mode(&d), 0o700);
        let f = d.join("f");
        std::fs::write(&f, b"x").unwrap();
        set_mode(&f, 0o666).unwrap();
        create_private(&f).unwrap();
        assert_eq!(mode(&f), 0o600);
        let g = d.join("g");
        std::fs::write(&g, b"keep").unwrap();
        set_mode(&g, 0o644).unwrap();
        ensure_private_file(&g).unwrap();
        assert_eq!((mode(&g), std::fs::read(&g).unwrap()), (0o600, b"keep".to_vec()));
        set_mode(root.path(), 0o1777).unwrap();
        prepare_data_dir(root.path()).unwrap();
        assert_eq!(mode(root.path()), 0o1777, "a shared sticky directory keeps its mode");
    }
}
