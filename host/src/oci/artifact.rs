//! The Wasm OCI artifact (CNCF TAG Runtime's layout, as `wash` and `wkg` push it): an OCI
//! image manifest whose config blob has media type `application/vnd.wasm.config.v0+json`
//! and whose one layer is the component, `application/wasm`.

use serde::{Deserialize, Serialize};

use super::error::{OciError, OciResult};

/// The manifest's media type.
pub const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
/// An image index's media type (refused on pull: an agent is one component).
pub const INDEX_MEDIA_TYPE: &str = "application/vnd.oci.image.index.v1+json";
/// The config blob's media type.
pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.wasm.config.v0+json";
/// The component layer's media type.
pub const LAYER_MEDIA_TYPE: &str = "application/wasm";
/// The config and layer media types of the older `wasm-to-oci` layout, also taken on pull.
const LEGACY_CONFIG_MEDIA_TYPE: &str = "application/vnd.wasm.config.v1+json";
const LEGACY_LAYER_MEDIA_TYPE: &str = "application/vnd.wasm.content.layer.v1+wasm";

/// A content descriptor.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// Media type of the content.
    pub media_type: String,
    /// Its digest (`sha256:<hex>`).
    pub digest: String,
    /// Its size in bytes.
    pub size: u64,
}

impl Descriptor {
    /// The descriptor of `bytes` as `media_type`.
    pub fn of(media_type: &str, bytes: &[u8]) -> Self {
        Self { media_type: media_type.to_owned(), digest: super::digest_of(bytes), size: bytes.len() as u64 }
    }
}

/// An OCI image manifest (the fields Cortex reads and writes).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    /// Always 2.
    pub schema_version: u32,
    /// [`MANIFEST_MEDIA_TYPE`] (or an index's, which is refused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// The config blob.
    pub config: Descriptor,
    /// The layers: one, the component.
    #[serde(default)]
    pub layers: Vec<Descriptor>,
}

/// The config blob: what `wash` and `wkg` write (the component's own import and export
/// lists are optional and left out).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WasmConfig {
    /// When it was pushed, RFC 3339.
    pub created: String,
    /// Always `wasm`.
    pub architecture: String,
    /// `wasip2` for a component.
    pub os: String,
    /// The digests of the layers, in order.
    pub layer_digests: Vec<String>,
}

/// The config blob and manifest of an artifact holding component `wasm`, pushed at
/// `created_ms` (milliseconds since the epoch). Same inputs, same bytes.
pub fn build(wasm: &[u8], created_ms: u64) -> (Vec<u8>, Vec<u8>) {
    let layer = Descriptor::of(LAYER_MEDIA_TYPE, wasm);
    let config = WasmConfig {
        created: rfc3339(created_ms / 1000),
        architecture: "wasm".into(),
        os: "wasip2".into(),
        layer_digests: vec![layer.digest.clone()],
    };
    // Serialising these plain structs cannot fail.
    let config = serde_json::to_vec(&config).unwrap_or_default();
    let manifest = Manifest {
        schema_version: 2,
        media_type: Some(MANIFEST_MEDIA_TYPE.into()),
        config: Descriptor::of(CONFIG_MEDIA_TYPE, &config),
        layers: vec![layer],
    };
    let manifest = serde_json::to_vec(&manifest).unwrap_or_default();
    (config, manifest)
}

/// The component layer of manifest `bytes`, refused unless it is a Wasm OCI artifact: an
/// image manifest (not an index), a wasm config, exactly one wasm layer.
pub fn wasm_layer(bytes: &[u8]) -> OciResult<Descriptor> {
    let bad = |why: String| OciError::BadArtifact(format!("not a Wasm OCI artifact: {why}"));
    let m: Manifest = serde_json::from_slice(bytes).map_err(|e| {
        if serde_json::from_slice::<serde_json::Value>(bytes).is_ok_and(|v| v["mediaType"] == INDEX_MEDIA_TYPE) {
            bad("an image index (several platforms), not one component".into())
        } else {
            bad(format!("the manifest does not parse: {e}"))
        }
    })?;
    if m.schema_version != 2 {
        return Err(bad(format!("schemaVersion {}", m.schema_version)));
    }
    match m.media_type.as_deref() {
        None | Some(MANIFEST_MEDIA_TYPE) => {}
        Some(other) => return Err(bad(format!("manifest media type {other}"))),
    }
    if m.config.media_type != CONFIG_MEDIA_TYPE && m.config.media_type != LEGACY_CONFIG_MEDIA_TYPE {
        return Err(bad(format!("config media type {} (want {CONFIG_MEDIA_TYPE})", m.config.media_type)));
    }
    let [layer] = m.layers.as_slice() else {
        return Err(bad(format!("{} layers (want one, the component)", m.layers.len())));
    };
    if layer.media_type != LAYER_MEDIA_TYPE && layer.media_type != LEGACY_LAYER_MEDIA_TYPE {
        return Err(bad(format!("layer media type {} (want {LAYER_MEDIA_TYPE})", layer.media_type)));
    }
    if !super::reference::valid_digest(&layer.digest) {
        return Err(bad(format!("layer digest {:?} (want sha256)", layer.digest)));
    }
    Ok(layer.clone())
}

/// `secs` since the epoch as RFC 3339 (UTC).
fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (y, m, d) = crate::civil::from_days(days);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_built_artifact_is_one_wasm_layer_under_a_wasm_config() {
        let (config, manifest) = build(b"\0asm component", 1_700_000_000_123);
        let layer = wasm_layer(&manifest).unwrap();
        assert_eq!(layer, Descriptor::of(LAYER_MEDIA_TYPE, b"\0asm component"));
        let c: serde_json::Value = serde_json::from_slice(&config).unwrap();
        assert_eq!(c["created"], "2023-11-14T22:13:20Z");
        assert_eq!((c["architecture"].as_str(), c["os"].as_str()), (Some("wasm"), Some("wasip2")));
        assert_eq!(c["layerDigests"][0], layer.digest.as_str());
        let m: serde_json::Value = serde_json::from_slice(&manifest).unwrap();
        assert_eq!(m["config"]["mediaType"], CONFIG_MEDIA_TYPE);
        assert_eq!(m["config"]["digest"], crate::oci::digest_of(&config).as_str());
    }

    #[test]
    fn container_images_indexes_and_extra_layers_are_refused() {
        let layer =
            serde_json::json!({"mediaType": LAYER_MEDIA_TYPE, "digest": crate::oci::digest_of(b"x"), "size": 1});
        let cfg = |mt: &str| serde_json::json!({"mediaType": mt, "digest": crate::oci::digest_of(b"{}"), "size": 2});
        let cases = [
            serde_json::json!({"schemaVersion": 2, "mediaType": INDEX_MEDIA_TYPE, "manifests": []}),
            serde_json::json!({"schemaVersion": 2, "config": cfg("application/vnd.oci.image.config.v1+json"), "layers": [layer]}),
            serde_json::json!({"schemaVersion": 2, "config": cfg(CONFIG_MEDIA_TYPE), "layers": [layer, layer]}),
            serde_json::json!({"schemaVersion": 2, "config": cfg(CONFIG_MEDIA_TYPE), "layers": []}),
        ];
        for c in cases {
            let e = wasm_layer(&serde_json::to_vec(&c).unwrap()).unwrap_err();
            assert_eq!(e.code(), "oci_bad_artifact", "{c}");
        }
        let ok = serde_json::json!({"schemaVersion": 2, "config": cfg(CONFIG_MEDIA_TYPE), "layers": [layer]});
        assert!(wasm_layer(&serde_json::to_vec(&ok).unwrap()).is_ok());
    }
}
