//! `cortex tenants update NAME --quota KEY=VALUE ...`: change the named quotas of a tenant
//! and keep the others (the API's `PATCH` merges). Sizes take units (`64MiB`), the
//! `*_ms` quotas durations (`5s`).

use anyhow::{Context, bail};
use serde_json::{Map, Value};

/// The `quotas` object of a `PATCH` from `KEY=VALUE` pairs.
pub fn quota_patch(pairs: &[String]) -> anyhow::Result<Value> {
    if pairs.is_empty() {
        bail!("name at least one quota to change: --quota KEY=VALUE");
    }
    let mut quotas = Map::new();
    for p in pairs {
        let (k, v) = p.split_once('=').with_context(|| format!("{p:?} is not KEY=VALUE"))?;
        let n = if let Ok(n) = v.parse::<u64>() {
            n
        } else if k.ends_with("_ms") {
            let d = super::units::parse_duration(v).map_err(|e| anyhow::anyhow!("{k}: {e}"))?;
            u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
        } else if k.ends_with("bytes") {
            super::units::parse_size(v).map_err(|e| anyhow::anyhow!("{k}: {e}"))?
        } else {
            bail!("{k}: {v:?} is not a whole number");
        };
        quotas.insert(k.to_owned(), Value::from(n));
    }
    Ok(serde_json::json!({ "quotas": quotas }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_become_the_named_quotas_only() {
        let v = quota_patch(&["agents=3".into(), "stored_bytes=1MiB".into(), "max_timeout_ms=2s".into()]).unwrap();
        assert_eq!(v, serde_json::json!({"quotas": {"agents": 3, "stored_bytes": 1 << 20, "max_timeout_ms": 2000}}));
        assert!(quota_patch(&["agents".into()]).is_err());
        assert!(quota_patch(&["agents=many".into()]).is_err());
        assert!(quota_patch(&[]).is_err());
    }
}
