//! The CRDs checked in under `deploy/crds/` are what `crdgen` makes from the types.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

#[test]
fn checked_in_crds_match_the_rust_types() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../crds");
    let mut files = cortex_operator::crd::crds().unwrap();
    files.push(("kustomization.yaml", cortex_operator::crd::kustomization()));
    let mut stale = Vec::new();
    for (name, want) in files {
        let have = std::fs::read_to_string(dir.join(name)).unwrap_or_default();
        if have != want {
            stale.push(name);
        }
    }
    assert!(
        stale.is_empty(),
        "deploy/crds/ is out of date ({stale:?}): regenerate it with \
         `cargo run -p cortex-operator --bin crdgen -- deploy/crds` and commit the result"
    );
}

#[test]
fn the_crds_are_namespaced_v1alpha1_of_cortex_dev_with_status_subresources() {
    for (name, yaml) in cortex_operator::crd::crds().unwrap() {
        let v: serde_json::Value = serde_yaml::from_str(&yaml).unwrap();
        assert_eq!(v["spec"]["group"], "cortex.dev", "{name}");
        assert_eq!(v["spec"]["scope"], "Namespaced", "{name}");
        assert_eq!(v["spec"]["versions"][0]["name"], "v1alpha1", "{name}");
        assert!(v["spec"]["versions"][0]["subresources"]["status"].is_object(), "{name}");
        assert_eq!(format!("{}.cortex.dev.yaml", v["spec"]["names"]["plural"].as_str().unwrap()), name);
    }
}
