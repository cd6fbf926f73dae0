//! The node's secrets keys: the current one seals every write, previous ones only open.
//!
//! A key is 32 bytes, given as 64 hex characters or as base64 (standard or URL-safe, with or
//! without padding), in `CORTEX_SECRETS_KEY` or in a file (a file may also hold the 32 raw
//! bytes). Its id is the first 16 hex characters of SHA-256 of a fixed label and the key:
//! it names the key in every record without telling anything about it.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use chacha20poly1305::{KeyInit, XChaCha20Poly1305};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::VaultError;

/// The environment variable that may hold the current key.
pub const KEY_ENV: &str = "CORTEX_SECRETS_KEY";

/// The key file made in the data directory when no key is given.
const DEFAULT_KEY_FILE: &str = "secrets.key";

/// `[secrets]`: where the key comes from, and the limits of the secret store.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SecretsConfig {
    /// The file holding the current key; unset: `CORTEX_SECRETS_KEY`, else
    /// `DATA/secrets.key` (made at the first start, mode 0600: fine for one node; every
    /// node of a cluster needs the same key).
    pub key_file: Option<PathBuf>,
    /// Files of retired keys: secrets sealed under them still open; every write seals
    /// with the current key.
    pub previous_key_files: Vec<PathBuf>,
    /// Largest secret value, in bytes.
    pub max_value_bytes: usize,
    /// Most secrets a tenant may have.
    pub max_per_tenant: usize,
}

impl Default for SecretsConfig {
    fn default() -> Self {
        Self { key_file: None, previous_key_files: Vec::new(), max_value_bytes: 16 << 10, max_per_tenant: 1000 }
    }
}

/// The keys of a node: the current one first.
pub struct Keyring {
    keys: Vec<(String, XChaCha20Poly1305)>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyring").field("ids", &self.ids()).finish()
    }
}

/// The id of `key` (see the module doc).
pub fn key_id(key: &[u8; 32]) -> String {
    let mut h = Sha256::new();
    h.update(b"cortex secrets key id v1\0");
    h.update(key);
    crate::secrets::hex(&h.finalize()[..8])
}

/// A key from its text or raw bytes (see the module doc).
fn parse_key(bytes: &[u8]) -> Result<Zeroizing<[u8; 32]>, String> {
    let mut out = Zeroizing::new([0u8; 32]);
    if bytes.len() == 32 {
        out.copy_from_slice(bytes);
        return Ok(out);
    }
    let text = std::str::from_utf8(bytes).map_err(|_| "not 32 raw bytes, hex or base64".to_owned())?.trim();
    let decoded: Zeroizing<Vec<u8>> = if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
        Zeroizing::new(hex::decode(text).map_err(|_| "bad hex".to_owned())?)
    } else {
        use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
        let d = [STANDARD, URL_SAFE, STANDARD_NO_PAD, URL_SAFE_NO_PAD].iter().find_map(|e| e.decode(text).ok());
        Zeroizing::new(d.ok_or_else(|| "neither 64 hex characters nor base64".to_owned())?)
    };
    if decoded.len() != 32 {
        return Err(format!("{} bytes, not 32", decoded.len()));
    }
    out.copy_from_slice(&decoded);
    Ok(out)
}

fn read_key(path: &Path) -> Result<Zeroizing<[u8; 32]>, VaultError> {
    let bytes = Zeroizing::new(
        std::fs::read(path)
            .map_err(|e| VaultError::Key(format!("cannot read the key file {}: {e}", path.display())))?,
    );
    #[cfg(unix)]
    if let Ok(meta) = std::fs::metadata(path) {
        use std::os::unix::fs::PermissionsExt;
        if meta.permissions().mode() & 0o077 != 0 {
            tracing::warn!(file = %path.display(), "the secrets key file is readable by others than its owner");
        }
    }
    parse_key(&bytes).map_err(|why| VaultError::Key(format!("the key file {} holds {why}", path.display())))
}

impl Keyring {
    /// The keys of `cfg`: the current one from `env_key` (the value of
    /// [`KEY_ENV`], if set and not empty), else `cfg.key_file`, else `DATA/secrets.key`
    /// (made, mode 0600, when missing); both an environment key and a key file is an error.
    pub fn load(cfg: &SecretsConfig, data_dir: &Path, env_key: Option<&str>) -> Result<Self, VaultError> {
        let env_key = env_key.filter(|k| !k.trim().is_empty());
        let current = match (env_key, &cfg.key_file) {
            (Some(_), Some(f)) => {
                return Err(VaultError::Key(format!(
                    "both {KEY_ENV} and [secrets] key_file ({}) are set: give one",
                    f.display()
                )));
            }
            (Some(k), None) => {
                parse_key(k.as_bytes()).map_err(|why| VaultError::Key(format!("{KEY_ENV} holds {why}")))?
            }
            (None, Some(f)) => read_key(f)?,
            (None, None) => {
                let path = data_dir.join(DEFAULT_KEY_FILE);
                if path.exists() {
                    read_key(&path)?
                } else {
                    let key = Zeroizing::new(
                        crate::secrets::random_bytes::<32>()
                            .map_err(|e| VaultError::Key(format!("no randomness: {e}")))?,
                    );
                    let text = Zeroizing::new(crate::secrets::hex(&*key));
                    crate::secrets::write_private(&path, text.as_bytes())
                        .map_err(|e| VaultError::Key(format!("cannot write {}: {e}", path.display())))?;
                    tracing::info!(file = %path.display(), key_id = %key_id(&key), "made a secrets key");
                    key
                }
            }
        };
        let mut previous = Vec::new();
        for f in &cfg.previous_key_files {
            previous.push(read_key(f)?);
        }
        Ok(Self::build(&current, previous.iter().map(|k| &**k)))
    }

    /// A keyring of these keys (tests, tools).
    pub fn from_keys(current: [u8; 32], previous: &[[u8; 32]]) -> Self {
        Self::build(&current, previous.iter())
    }

    fn build<'a>(current: &[u8; 32], previous: impl Iterator<Item = &'a [u8; 32]>) -> Self {
        let mut keys = vec![(key_id(current), XChaCha20Poly1305::new(current.into()))];
        for k in previous {
            let id = key_id(k);
            if keys.iter().all(|(have, _)| *have != id) {
                keys.push((id, XChaCha20Poly1305::new(k.into())));
            }
        }
        Self { keys }
    }

    /// The current key and its id.
    pub(super) fn current(&self) -> (&str, &XChaCha20Poly1305) {
        let (id, k) = &self.keys[0];
        (id, k)
    }

    /// The id of the current key.
    pub fn current_id(&self) -> String {
        self.keys[0].0.clone()
    }

    /// The key of `id`, current or previous.
    pub(super) fn get(&self, id: &str) -> Option<&XChaCha20Poly1305> {
        self.keys.iter().find(|(have, _)| have == id).map(|(_, k)| k)
    }

    /// Every key id, the current one first.
    pub fn ids(&self) -> Vec<String> {
        self.keys.iter().map(|(id, _)| id.clone()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_parse_from_hex_base64_and_raw_bytes_and_a_default_is_made_private() {
        let raw = [0xabu8; 32];
        let hex = crate::secrets::hex(&raw);
        let b64 = base64::engine::general_purpose::STANDARD.encode(raw);
        for text in [hex.as_bytes(), format!("{b64}\n").as_bytes(), &raw[..]] {
            assert_eq!(*parse_key(text).unwrap(), raw);
        }
        assert!(parse_key(b"short").is_err());
        let dir = tempfile::tempdir().unwrap();
        let cfg = SecretsConfig::default();
        let a = Keyring::load(&cfg, dir.path(), None).unwrap();
        let b = Keyring::load(&cfg, dir.path(), None).unwrap();
        assert_eq!(a.current_id(), b.current_id());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(DEFAULT_KEY_FILE)).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let env = Keyring::load(&cfg, dir.path(), Some(&hex)).unwrap();
        assert_eq!(env.current_id(), key_id(&raw));
        let both = SecretsConfig { key_file: Some(dir.path().join("k")), ..SecretsConfig::default() };
        assert!(Keyring::load(&both, dir.path(), Some(&hex)).is_err());
    }
}
