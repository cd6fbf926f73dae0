//! `"module": "oci://host[:port]/name:tag"` (or `...@sha256:<digest>`) in a deploy or an
//! upgrade: the server pulls the artifact, if `[oci]` lists its registry, with the tenant's
//! own credentials for it; the component then goes the way of an upload.
//!
//! The server connects where a tenant says: only to the registries its operator listed
//! (plain http only to those listed as insecure), following redirects (to blob storage)
//! only to https or to those registries, with timeouts, and reading every body under a
//! limit (the component under `http.module_limit_bytes`).

use std::sync::Arc;
use std::time::Duration;

use super::AppState;
use super::error::ApiResult;
use crate::config::ServerConfig;
use crate::oci::{Client, OciError, OciSource, Policy, Reference};

/// The scheme of a module given as an OCI reference.
const SCHEME: &str = "oci://";

/// What a pull brought: the component and where it came from.
#[derive(Debug)]
pub(super) struct Pulled {
    /// The component's bytes.
    pub wasm: Vec<u8>,
    /// The reference and the manifest digest it resolved to.
    pub source: OciSource,
}

fn listed(list: &[String], registry: &str) -> bool {
    list.iter().any(|r| r.eq_ignore_ascii_case(registry))
}

/// The policy for pulling from `r`'s registry, or `oci_not_allowed`.
fn policy(cfg: &ServerConfig, r: &Reference) -> Result<Policy, OciError> {
    let oci = &cfg.oci;
    let insecure = listed(&oci.insecure_registries, &r.registry);
    if !insecure && !listed(&oci.allowed_registries, &r.registry) {
        return Err(OciError::NotAllowed(format!(
            "this server does not pull from {} (its [oci] allowed_registries)",
            r.registry
        )));
    }
    let insecure_list = oci.insecure_registries.clone();
    let may_follow = move |u: &reqwest::Url| {
        let Some(host) = u.host_str() else { return false };
        let authority = match u.port() {
            Some(p) => format!("{host}:{p}"),
            None => host.to_owned(),
        };
        match u.scheme() {
            "https" => true,
            "http" => listed(&insecure_list, &authority),
            _ => false,
        }
    };
    Ok(Policy {
        plain_http: insecure,
        may_follow: Arc::new(may_follow),
        max_manifest_bytes: oci.max_manifest_bytes,
        max_blob_bytes: cfg.http.module_limit_bytes as u64,
        connect_timeout: Duration::from_millis(oci.connect_timeout_ms),
        request_timeout: Duration::from_millis(oci.request_timeout_ms),
    })
}

/// `module` pulled, if it is an `oci://` reference (`None`: it is a module digest), for
/// tenant `tenant` with its credentials for the registry.
pub(super) async fn pull(st: &AppState, tenant: &str, module: &str) -> ApiResult<Option<Pulled>> {
    let Some(raw) = module.strip_prefix(SCHEME) else { return Ok(None) };
    let r = Reference::parse(raw)?;
    let policy = policy(&st.config, &r)?;
    let credentials = super::registries::credentials_for(st, tenant, &r.registry).await?;
    let mut client = Client::new(&r, credentials, policy, false)?;
    let pulled = client.pull(&r).await?;
    tracing::info!(tenant, reference = %r, digest = %pulled.manifest_digest, "pulled an OCI artifact");
    Ok(Some(Pulled {
        wasm: pulled.wasm,
        source: OciSource { reference: r.to_string(), digest: pulled.manifest_digest },
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(allowed: &[&str], insecure: &[&str]) -> ServerConfig {
        let mut c = ServerConfig::default();
        c.oci.allowed_registries = allowed.iter().map(|s| (*s).to_owned()).collect();
        c.oci.insecure_registries = insecure.iter().map(|s| (*s).to_owned()).collect();
        c
    }

    #[test]
    fn only_listed_registries_are_pulled_from_and_plain_http_only_from_insecure_ones() {
        let r = |s: &str| Reference::parse(s).unwrap();
        let none = cfg(&[], &[]);
        assert_eq!(policy(&none, &r("ghcr.io/a/b:v1")).unwrap_err().code(), "oci_not_allowed");
        assert_eq!(policy(&none, &r("127.0.0.1:5000/a/b:v1")).unwrap_err().code(), "oci_not_allowed");
        let c = cfg(&["ghcr.io"], &["127.0.0.1:5000"]);
        let https = policy(&c, &r("GHCR.io/a/b:v1")).unwrap();
        assert!(!https.plain_http);
        assert!(policy(&c, &r("127.0.0.1:5000/a/b:v1")).unwrap().plain_http);
        assert_eq!(policy(&c, &r("127.0.0.1:5001/a/b:v1")).unwrap_err().code(), "oci_not_allowed");
        let follow = |u: &str| (https.may_follow)(&reqwest::Url::parse(u).unwrap());
        assert!(follow("https://blobs.example.net/x?sig=1"));
        assert!(follow("http://127.0.0.1:5000/v2/"));
        assert!(!follow("http://169.254.169.254/latest/meta-data"));
        assert!(!follow("http://127.0.0.1:5001/v2/"));
        assert!(!follow("file:///etc/passwd"));
    }
}
