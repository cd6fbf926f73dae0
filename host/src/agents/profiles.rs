//! Resource profiles: named limits (fuel, memory, timeout, concurrency) a tenant's admins
//! define, each value at most the tenant's quotas. A deploy that names one takes from it
//! what its spec leaves out ([`Agents::resolve_profile`]); the values are copied into the
//! agent's record then, so a later change of the profile applies to the agents deployed
//! after it, and a profile an agent was deployed with cannot be deleted (409
//! `profile_in_use`) while that agent exists.

use serde::Deserialize;

use super::Agents;
use super::error::{AgentsError, AgentsResult};
use crate::registry::{AgentLimits, AgentRecord, ProfileRecord, Quotas, now_ms, scoped};
use crate::store::RecordKind;

/// What a profile sets (the body of `PUT /v1/profiles/{name}`): each value optional, each
/// given one above 0 and at most the tenant's quota.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProfileSpec {
    /// Fuel, memory and timeout.
    #[serde(default)]
    pub limits: AgentLimits,
    /// Invocations at once.
    #[serde(default)]
    #[schema(minimum = 1)]
    pub max_concurrency: Option<u32>,
}

fn invalid(message: String) -> AgentsError {
    AgentsError::Refused { code: "invalid_profile", message }
}

/// Each value of `spec` above 0 and at most `q` (and `max_instances` for the concurrency).
pub fn check_profile(spec: &ProfileSpec, q: &Quotas, max_instances: u32) -> AgentsResult<()> {
    let l = &spec.limits;
    let values = [
        ("limits.fuel", l.fuel, q.max_fuel, "max_fuel"),
        ("limits.memory_bytes", l.memory_bytes, q.max_memory_bytes, "max_memory_bytes"),
        ("limits.timeout_ms", l.timeout_ms, q.max_timeout_ms, "max_timeout_ms"),
        (
            "max_concurrency",
            spec.max_concurrency.map(u64::from),
            u64::from(q.concurrent_invocations),
            "concurrent_invocations",
        ),
    ];
    for (what, v, max, quota) in values {
        match v {
            Some(0) => return Err(invalid(format!("{what} must be above 0"))),
            Some(v) if v > max => {
                return Err(AgentsError::Refused {
                    code: "over_quota",
                    message: format!("{what} = {v} is over the tenant's quota {quota} of {max}"),
                });
            }
            _ => {}
        }
    }
    if let Some(c) = spec.max_concurrency.filter(|c| *c > max_instances) {
        return Err(invalid(format!("max_concurrency = {c} is over the server's most of {max_instances}")));
    }
    Ok(())
}

impl Agents {
    /// The profile `name` of `tenant`, or 400 `unknown_profile` (what a deploy names).
    pub(super) async fn resolve_profile(&self, tenant: &str, name: &str) -> AgentsResult<ProfileRecord> {
        match self.registry.get::<ProfileRecord>(RecordKind::Profile, &scoped(tenant, name)).await? {
            Some((p, _)) => Ok(p),
            None => Err(AgentsError::Refused {
                code: "unknown_profile",
                message: format!("the tenant has no resource profile {name:?}"),
            }),
        }
    }

    /// Create or replace `tenant`'s profile `name` with `spec` (checked against `quotas`);
    /// `true` when it was created. The caller holds the tenant's write lock.
    pub async fn put_profile(
        &self,
        tenant: &str,
        quotas: &Quotas,
        name: &str,
        spec: ProfileSpec,
    ) -> AgentsResult<(ProfileRecord, bool)> {
        check_profile(&spec, quotas, self.config.engine.max_instances)?;
        let key = scoped(tenant, name);
        let old = self.registry.get::<ProfileRecord>(RecordKind::Profile, &key).await?;
        let now = now_ms();
        let rec = ProfileRecord {
            tenant: tenant.to_owned(),
            name: name.to_owned(),
            limits: spec.limits,
            max_concurrency: spec.max_concurrency,
            created_ms: old.as_ref().map_or(now, |(p, _)| p.created_ms),
            updated_ms: now,
        };
        // Compare-and-swap on what was read: a concurrent write of the same profile on
        // another node is a 409 `concurrent_update`, not a lost update.
        self.registry.put(RecordKind::Profile, &key, &rec, Some(old.as_ref().map_or(0, |(_, rev)| *rev))).await?;
        Ok((rec, old.is_none()))
    }

    /// Delete `tenant`'s profile `name`: 404 when there is none, 409 `profile_in_use` while
    /// an agent deployed with it exists. The caller holds the tenant's write lock.
    pub async fn delete_profile(&self, tenant: &str, name: &str) -> AgentsResult<()> {
        let key = scoped(tenant, name);
        if self.registry.get::<ProfileRecord>(RecordKind::Profile, &key).await?.is_none() {
            return Err(AgentsError::NotFound(format!("profile {name:?} not found")));
        }
        let agents = self.registry.list::<AgentRecord>(RecordKind::Agent, &scoped(tenant, "")).await?;
        if let Some(a) = agents.iter().find(|a| a.profile.as_deref() == Some(name)) {
            return Err(AgentsError::Conflict {
                code: "profile_in_use",
                message: format!("agent {:?} was deployed with profile {name:?}", a.name),
            });
        }
        self.registry.delete(RecordKind::Profile, &key).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(r: AgentsResult<()>) -> &'static str {
        match r {
            Ok(()) => "ok",
            Err(AgentsError::Refused { code, .. }) => code,
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn a_profile_takes_values_above_zero_and_within_the_quotas() {
        let q = Quotas { max_fuel: 100, concurrent_invocations: 8, ..Quotas::default() };
        let spec =
            |fuel, conc| ProfileSpec { limits: AgentLimits { fuel, ..AgentLimits::default() }, max_concurrency: conc };
        assert_eq!(code(check_profile(&ProfileSpec::default(), &q, 16)), "ok");
        assert_eq!(code(check_profile(&spec(Some(100), Some(8)), &q, 16)), "ok");
        assert_eq!(code(check_profile(&spec(Some(0), None), &q, 16)), "invalid_profile");
        assert_eq!(code(check_profile(&spec(None, Some(0)), &q, 16)), "invalid_profile");
        assert_eq!(code(check_profile(&spec(Some(101), None), &q, 16)), "over_quota");
        assert_eq!(code(check_profile(&spec(None, Some(9)), &q, 16)), "over_quota");
        assert_eq!(code(check_profile(&spec(None, Some(8)), &q, 4)), "invalid_profile");
    }
}
