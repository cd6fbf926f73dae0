//! The per-tenant secret store: values a tenant-admin writes through `/v1/secrets` and the
//! host injects into outgoing requests, never returned through the API, never logged.
//!
//! Each secret is one [`RecordKind::Secret`] record keyed `tenant/name`, holding its value
//! encrypted with XChaCha20-Poly1305 under the node key: a random 24-byte nonce per write,
//! the tenant and the secret's name bound as associated data (a ciphertext copied to another
//! tenant or name does not decrypt), and the id of the key that sealed it. Secrets are not
//! replicated through the registry stream: every node reads the one shared store when it
//! reveals one, so a secret written through any node is there on every node at once, and no
//! ciphertext travels in the stream every node follows.
//!
//! The key ([`Keyring`]): `CORTEX_SECRETS_KEY` (64 hex characters or base64 of 32 bytes),
//! else `[secrets] key_file`, else `DATA/secrets.key`, made at the first start (mode 0600).
//! Every node of a cluster needs the same key: a node that starts on a store holding secrets
//! sealed under a key id it does not have refuses to start ([`VaultError::MissingKey`]).
//! Rotation: retired keys stay in `[secrets] previous_key_files` for decryption; every write
//! seals with the current key.

mod keys;

use std::collections::BTreeMap;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use chacha20poly1305::XNonce;
use chacha20poly1305::aead::{Aead, Payload};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

pub use self::keys::{KEY_ENV, Keyring, SecretsConfig};
use crate::store::{RecordKind, Store, StoreError};

/// The rule of a secret's name, as shown in errors and in the OpenAPI document.
pub const NAME_PATTERN: &str = "^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$";

/// Longest secret name, in bytes.
pub const MAX_NAME: usize = 128;

/// Why a secret operation failed.
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    /// The name breaks [`NAME_PATTERN`].
    #[error("a secret name must match {NAME_PATTERN} (got {0:?})")]
    InvalidName(String),
    /// The value is empty.
    #[error("a secret value must not be empty")]
    Empty,
    /// The value is longer than `[secrets] max_value_bytes`.
    #[error("a secret value may have at most {max} bytes (got {got})")]
    TooLarge {
        /// The limit.
        max: usize,
        /// The value's size.
        got: usize,
    },
    /// The tenant has `[secrets] max_per_tenant` secrets already.
    #[error("the tenant has {0} secrets, the most it may have; delete one first")]
    TooMany(usize),
    /// The record does not decrypt under the key it names: damaged, or moved to another
    /// tenant or name.
    #[error("the secret {tenant}/{name} does not decrypt: damaged, or copied from another tenant or name")]
    Decrypt {
        /// Its tenant.
        tenant: String,
        /// Its name.
        name: String,
    },
    /// A record is sealed under a key this node does not have.
    #[error("the secret {tenant}/{name} is sealed under key id {key_id}, which this node does not have")]
    UnknownKey {
        /// Its tenant.
        tenant: String,
        /// Its name.
        name: String,
        /// The key id it names.
        key_id: String,
    },
    /// At start: the store holds secrets sealed under key ids this node does not have.
    #[error(
        "the store holds {count} secret(s) sealed under key id(s) {missing:?}, which this node does not have \
         (its key ids: {have:?}): give every node of a cluster the same key ([secrets] key_file or \
         CORTEX_SECRETS_KEY), and keep a retired key in [secrets] previous_key_files until every secret was \
         written again"
    )]
    MissingKey {
        /// Secrets sealed under a missing key.
        count: usize,
        /// The key ids missing.
        missing: Vec<String>,
        /// The key ids this node has, current first.
        have: Vec<String>,
    },
    /// The key could not be read or made.
    #[error("secrets key: {0}")]
    Key(String),
    /// A record is not what this version writes.
    #[error("the secret record {0} is malformed")]
    Malformed(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A secret's value on its way in: its `Debug` and `Display` print `[redacted]` (so no log
/// line, span field or error shows it), and its memory is wiped when it is dropped.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SecretValue(Zeroizing<String>);

impl SecretValue {
    /// Wrap `value`.
    pub fn new(value: String) -> Self {
        Self(Zeroizing::new(value))
    }

    /// The value, for sealing it (never for showing it).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

impl std::fmt::Display for SecretValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

impl<'de> Deserialize<'de> for SecretValue {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(SecretValue::new)
    }
}

/// The stored record: the sealed value and what the API shows of a secret.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SecretRecord {
    /// The tenant (informational: decryption binds the record's key, not this field).
    pub tenant: String,
    /// The secret's name (informational, as `tenant`).
    pub name: String,
    /// The id of the key that sealed it (see [`Keyring`]).
    pub key_id: String,
    /// The nonce, base64 (24 bytes).
    pub nonce: String,
    /// The ciphertext with its tag, base64.
    pub ciphertext: String,
    /// 1 at creation, bumped by every write.
    pub version: u64,
    /// When it was first written (ms since the epoch).
    pub created_ms: u64,
    /// When it was last written.
    pub updated_ms: u64,
}

/// What the API shows of a secret: never its value.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct SecretMeta {
    /// Its name.
    pub name: String,
    /// 1 at creation, bumped by every write.
    pub version: u64,
    /// When it was first written (ms since the epoch).
    pub created_ms: u64,
    /// When it was last written (ms since the epoch).
    pub updated_ms: u64,
    /// The id of the key that sealed its value (a key id is a digest of the key, never
    /// the key): after a rotation, secrets still under a retired key show its id.
    pub key_id: String,
}

impl From<&SecretRecord> for SecretMeta {
    fn from(r: &SecretRecord) -> Self {
        Self {
            name: r.name.clone(),
            version: r.version,
            created_ms: r.created_ms,
            updated_ms: r.updated_ms,
            key_id: r.key_id.clone(),
        }
    }
}

/// Whether `name` is a valid secret name ([`NAME_PATTERN`]).
pub fn valid_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= MAX_NAME
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

/// The record key of `tenant`'s secret `name`.
fn record_key(tenant: &str, name: &str) -> String {
    crate::registry::scoped(tenant, name)
}

/// The associated data a value is sealed with: the tenant and the name, unambiguously.
fn aad(tenant: &str, name: &str) -> Vec<u8> {
    let mut v = Vec::with_capacity(24 + tenant.len() + name.len());
    v.extend_from_slice(b"cortex-secret\0v1\0");
    v.extend_from_slice(tenant.as_bytes());
    v.push(0);
    v.extend_from_slice(name.as_bytes());
    v
}

/// The secret store of a node (see the module doc).
pub struct Vault {
    store: Arc<dyn Store>,
    keys: Keyring,
    max_value_bytes: usize,
    max_per_tenant: usize,
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vault").field("key_id", &self.keys.current_id()).finish_non_exhaustive()
    }
}

/// Tries of a write that lost a compare-and-swap race with another write of the same secret.
const PUT_TRIES: usize = 8;

impl Vault {
    /// A vault over `store` with `keys`, within the limits of `cfg`.
    pub fn new(store: Arc<dyn Store>, keys: Keyring, cfg: &SecretsConfig) -> Self {
        Self { store, keys, max_value_bytes: cfg.max_value_bytes, max_per_tenant: cfg.max_per_tenant }
    }

    /// The node's keys.
    pub fn keys(&self) -> &Keyring {
        &self.keys
    }

    /// Its keys back (to build the node's vault after a [`Self::check_keys`]).
    pub fn into_keys(self) -> Keyring {
        self.keys
    }

    /// At start: refuse ([`VaultError::MissingKey`]) when the store holds secrets sealed
    /// under a key id this node does not have.
    pub async fn check_keys(&self) -> Result<(), VaultError> {
        let mut missing: BTreeMap<String, usize> = BTreeMap::new();
        for (key, bytes) in self.store.record_list(RecordKind::Secret, "").await? {
            let rec: SecretRecord = serde_json::from_slice(&bytes).map_err(|_| VaultError::Malformed(key))?;
            if self.keys.get(&rec.key_id).is_none() {
                *missing.entry(rec.key_id).or_default() += 1;
            }
        }
        if missing.is_empty() {
            return Ok(());
        }
        Err(VaultError::MissingKey {
            count: missing.values().sum(),
            missing: missing.into_keys().collect(),
            have: self.keys.ids(),
        })
    }

    fn seal(&self, tenant: &str, name: &str, value: &SecretValue) -> Result<(String, String, String), VaultError> {
        let (id, cipher) = self.keys.current();
        let nonce = crate::secrets::random_bytes::<24>().map_err(|e| VaultError::Key(format!("no randomness: {e}")))?;
        let aad = aad(tenant, name);
        let ct = cipher
            .encrypt(XNonce::from_slice(&nonce), Payload { msg: value.expose().as_bytes(), aad: &aad })
            .map_err(|_| VaultError::Key("encryption failed".into()))?;
        Ok((id.to_owned(), B64.encode(nonce), B64.encode(ct)))
    }

    fn open(&self, tenant: &str, name: &str, rec: &SecretRecord) -> Result<Zeroizing<String>, VaultError> {
        let cipher = self.keys.get(&rec.key_id).ok_or_else(|| VaultError::UnknownKey {
            tenant: tenant.to_owned(),
            name: name.to_owned(),
            key_id: rec.key_id.clone(),
        })?;
        let decrypt = || VaultError::Decrypt { tenant: tenant.to_owned(), name: name.to_owned() };
        let nonce = B64.decode(&rec.nonce).map_err(|_| decrypt())?;
        let ct = B64.decode(&rec.ciphertext).map_err(|_| decrypt())?;
        if nonce.len() != 24 {
            return Err(decrypt());
        }
        let aad = aad(tenant, name);
        let plain = Zeroizing::new(
            cipher.decrypt(XNonce::from_slice(&nonce), Payload { msg: &ct, aad: &aad }).map_err(|_| decrypt())?,
        );
        let text = std::str::from_utf8(&plain).map_err(|_| decrypt())?;
        Ok(Zeroizing::new(text.to_owned()))
    }

    async fn read(&self, tenant: &str, name: &str) -> Result<Option<(SecretRecord, u64)>, VaultError> {
        let key = record_key(tenant, name);
        match self.store.record_get(RecordKind::Secret, &key).await? {
            None => Ok(None),
            Some((bytes, rev)) => {
                let rec = serde_json::from_slice(&bytes).map_err(|_| VaultError::Malformed(key))?;
                Ok(Some((rec, rev)))
            }
        }
    }

    fn check(&self, name: &str, value: Option<&SecretValue>) -> Result<(), VaultError> {
        if !valid_name(name) {
            return Err(VaultError::InvalidName(name.chars().take(MAX_NAME).collect()));
        }
        if let Some(v) = value {
            if v.expose().is_empty() {
                return Err(VaultError::Empty);
            }
            if v.expose().len() > self.max_value_bytes {
                return Err(VaultError::TooLarge { max: self.max_value_bytes, got: v.expose().len() });
            }
        }
        Ok(())
    }

    /// Store `tenant`'s secret `name` (sealed with the current key): its metadata and
    /// whether it was created (else replaced).
    pub async fn put(&self, tenant: &str, name: &str, value: &SecretValue) -> Result<(SecretMeta, bool), VaultError> {
        self.check(name, Some(value))?;
        let key = record_key(tenant, name);
        let mut last = None;
        for _ in 0..PUT_TRIES {
            let found = self.read(tenant, name).await?;
            if found.is_none() && self.max_per_tenant != usize::MAX {
                let n = self.store.record_list(RecordKind::Secret, &record_key(tenant, "")).await?.len();
                if n >= self.max_per_tenant {
                    return Err(VaultError::TooMany(n));
                }
            }
            let now = crate::registry::now_ms();
            let (key_id, nonce, ciphertext) = self.seal(tenant, name, value)?;
            let (version, created_ms, expected) = match &found {
                Some((r, rev)) => (r.version + 1, r.created_ms, *rev),
                None => (1, now, 0),
            };
            let rec = SecretRecord {
                tenant: tenant.to_owned(),
                name: name.to_owned(),
                key_id,
                nonce,
                ciphertext,
                version,
                created_ms,
                updated_ms: now,
            };
            let bytes = serde_json::to_vec(&rec).map_err(|_| VaultError::Malformed(key.clone()))?;
            match self.store.record_put(RecordKind::Secret, &key, bytes, Some(expected)).await {
                Ok(_) => {
                    tracing::info!(tenant, secret = name, version, "secret stored");
                    return Ok((SecretMeta::from(&rec), found.is_none()));
                }
                Err(e @ StoreError::Conflict { .. }) => last = Some(e),
                Err(e) => return Err(e.into()),
            }
        }
        Err(last.map_or_else(|| VaultError::Malformed(key), VaultError::from))
    }

    /// The metadata of `tenant`'s secrets, in name order.
    pub async fn list(&self, tenant: &str) -> Result<Vec<SecretMeta>, VaultError> {
        let mut out = Vec::new();
        for (key, bytes) in self.store.record_list(RecordKind::Secret, &record_key(tenant, "")).await? {
            let rec: SecretRecord = serde_json::from_slice(&bytes).map_err(|_| VaultError::Malformed(key))?;
            out.push(SecretMeta::from(&rec));
        }
        Ok(out)
    }

    /// The metadata of `tenant`'s secret `name`, if it exists.
    pub async fn meta(&self, tenant: &str, name: &str) -> Result<Option<SecretMeta>, VaultError> {
        self.check(name, None)?;
        Ok(self.read(tenant, name).await?.map(|(r, _)| SecretMeta::from(&r)))
    }

    /// Delete `tenant`'s secret `name`; returns whether it existed.
    pub async fn delete(&self, tenant: &str, name: &str) -> Result<bool, VaultError> {
        self.check(name, None)?;
        let gone = self.store.record_delete(RecordKind::Secret, &record_key(tenant, name)).await?;
        if gone {
            tracing::info!(tenant, secret = name, "secret deleted");
        }
        Ok(gone)
    }

    /// Delete every secret of `tenant` (the tenant is being deleted); returns how many.
    pub async fn purge_tenant(&self, tenant: &str) -> Result<u64, VaultError> {
        let keys: Vec<String> = self
            .store
            .record_list(RecordKind::Secret, &record_key(tenant, ""))
            .await?
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        Ok(self.store.record_delete_many(RecordKind::Secret, &keys).await?)
    }

    /// The value of `tenant`'s secret `name` (for the host to inject into an outgoing
    /// request; never for an API answer), or `None` when there is none. A record that does
    /// not decrypt is an error, never a value.
    pub async fn reveal(&self, tenant: &str, name: &str) -> Result<Option<Zeroizing<String>>, VaultError> {
        if !valid_name(name) {
            return Ok(None);
        }
        match self.read(tenant, name).await? {
            None => Ok(None),
            Some((rec, _)) => self.open(tenant, name, &rec).map(Some),
        }
    }
}

/// The egress path reads the secrets a grant injects from the vault. A name that is not a
/// valid secret name, or a secret that does not exist, is `None`; a record that does not
/// open (another key, damaged) is an error, never a value.
impl crate::egress::SecretSource for Vault {
    fn reveal<'a>(&'a self, tenant: &'a str, name: &'a str) -> crate::egress::Reveal<'a> {
        Box::pin(async move {
            Vault::reveal(self, tenant, name)
                .await
                .map_err(|e| crate::egress::SecretSourceError::Unavailable(e.to_string()))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::EmbeddedStore;

    fn cfg() -> SecretsConfig {
        SecretsConfig::default()
    }

    fn vault(store: Arc<dyn Store>, key: [u8; 32], previous: &[[u8; 32]]) -> Vault {
        Vault::new(store, Keyring::from_keys(key, previous), &cfg())
    }

    #[tokio::test]
    async fn sealed_values_round_trip_and_stay_bound_to_their_tenant_and_name() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(EmbeddedStore::open(&dir.path().join("s")).unwrap());
        let v = vault(store.clone(), [7; 32], &[]);
        let (m, created) = v.put("acme", "openai", &SecretValue::new("sk-123".into())).await.unwrap();
        assert!(created);
        assert_eq!(m.version, 1);
        let (m, created) = v.put("acme", "openai", &SecretValue::new("sk-456".into())).await.unwrap();
        assert!(!created);
        assert_eq!(m.version, 2);
        assert_eq!(v.reveal("acme", "openai").await.unwrap().unwrap().as_str(), "sk-456");
        assert!(v.reveal("other", "openai").await.unwrap().is_none());
        // Moved to another tenant or name: does not decrypt.
        let (bytes, _) = store.record_get(RecordKind::Secret, "acme/openai").await.unwrap().unwrap();
        assert!(!String::from_utf8_lossy(&bytes).contains("sk-456"));
        store.record_put(RecordKind::Secret, "evil/openai", bytes.clone(), None).await.unwrap();
        store.record_put(RecordKind::Secret, "acme/other", bytes, None).await.unwrap();
        assert!(matches!(v.reveal("evil", "openai").await, Err(VaultError::Decrypt { .. })));
        assert!(matches!(v.reveal("acme", "other").await, Err(VaultError::Decrypt { .. })));
        // Another key: refused at start, readable with the old one kept as previous.
        let w = vault(store.clone(), [8; 32], &[]);
        assert!(matches!(w.check_keys().await, Err(VaultError::MissingKey { .. })));
        let r = vault(store.clone(), [8; 32], &[[7; 32]]);
        r.check_keys().await.unwrap();
        assert_eq!(r.reveal("acme", "openai").await.unwrap().unwrap().as_str(), "sk-456");
        let (m, _) = r.put("acme", "openai", &SecretValue::new("sk-789".into())).await.unwrap();
        assert_eq!(m.key_id, r.keys().current_id());
        assert_eq!(v.purge_tenant("acme").await.unwrap(), 2);
    }

    #[test]
    fn names_and_redaction() {
        assert!(valid_name("OPENAI_API_KEY"));
        assert!(valid_name("openai.prod-1"));
        assert!(!valid_name(""));
        assert!(!valid_name(".hidden"));
        assert!(!valid_name("a/b"));
        assert!(!valid_name(&"a".repeat(129)));
        let s = SecretValue::new("hunter2".into());
        assert_eq!(format!("{s:?} {s}"), "[redacted] [redacted]");
    }
}
