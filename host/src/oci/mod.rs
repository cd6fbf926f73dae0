//! Distribution of agents as OCI artifacts: the CNCF "Wasm OCI artifact" layout (the one
//! wasmCloud's `wash` and `wkg` push and pull) over the OCI distribution protocol, on
//! `reqwest`. The `cortex push` command and the server's `oci://` deploys both use it.
//!
//! - [`Reference`], a reference: `host[:port]/namespace/name[:tag][@sha256:...]`.
//! - [`artifact`], the layout: media types, the config blob and the manifest, and what a
//!   pulled manifest must be to be taken as an agent.
//! - [`Client`], the protocol: blobs and manifests, bearer-token and basic auth, every body
//!   read under a limit, redirects only where a [`Policy`] permits.

pub mod artifact;
mod client;
mod error;
mod reference;

pub use client::{Client, Credentials, Policy, Pulled};
pub use error::{OciError, OciResult};
pub use reference::Reference;

/// Where an agent's module came from when it was deployed from an OCI reference: the
/// reference as given and the manifest digest it resolved to (a restart or replay runs the
/// module of that digest; only an upgrade resolves a tag again).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct OciSource {
    /// The reference as the deploy gave it, without the `oci://` scheme.
    pub reference: String,
    /// The manifest digest it resolved to (`sha256:<hex>`).
    pub digest: String,
}

/// The `sha256:<hex>` digest of `bytes`, as OCI names blobs and manifests.
pub fn digest_of(bytes: &[u8]) -> String {
    format!("sha256:{}", crate::secrets::sha256_hex(bytes))
}
