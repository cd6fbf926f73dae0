//! The OpenAPI 3.1 document served at `/v1/openapi.json`, generated from the API's own Rust
//! types: request bodies, responses and query parameters are the handlers' types
//! (`#[derive(utoipa::ToSchema)]`, `#[derive(utoipa::IntoParams)]`), assembled by one table of
//! operations ([`operations`]).
//!
//! Each operation has:
//! - a stable `operationId` in lowerCamelCase, verb first (`deployAgent`, `listModules`,
//!   `invokeAgent`, ...): generated clients name their methods after it, so it never changes
//!   once released;
//! - a tag: the path's first segment after `/v1/` (`agents`, `modules`, ...), `server` for
//!   the routes outside `/v1`;
//! - its path parameters, from the path template (`{name}` of an agent or a profile with the
//!   name rule's pattern), its query parameters from its query type, the optional
//!   `x-request-id` request header, and on authenticated routes the bearer security scheme
//!   and the optional `x-cortex-tenant` header;
//! - every status it answers with: its successes with their bodies, and each error status
//!   with the `Problem` schema (`application/problem+json`); every response documents the
//!   `x-request-id` header.
//!
//! ## Adding a route
//! 1. Serve it in [`super::router`] and give it an action in [`super::route_action`].
//! 2. Derive `utoipa::ToSchema` on its request and response types (`utoipa::IntoParams`
//!    with `#[into_params(parameter_in = Query)]` on its query type); a field whose type has
//!    no schema gets `#[schema(value_type = String)]` (or the type it serializes as).
//! 3. Add one entry to [`operations`]: method, path template, operationId, summary, then
//!    its body (`.json::<Req>()` or `.raw(..)`), its query (`.query::<Q>()`), its successes
//!    (`.ok::<Resp>(200, ..)`, `.list::<Item>(..)`, `.empty(204, ..)`, `.raw_ok(..)`) and the
//!    error statuses beyond the common ones (`.errors(&[409, 422])`).
//!
//! The tests check the rest: every documented operation is served and every other method
//! of its path is not (`tests/all/api.rs`), every authenticated route of the guard's table is
//! documented (the unit test below), the document is valid (openapi-spec-validator), its
//! schemas tell the truth (schemathesis) and a typed client generated from it compiles
//! (openapi-typescript; `tests/all/openapi_doc.rs`).

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};
use utoipa::openapi::path::ParameterIn;
use utoipa::{IntoParams, ToSchema};

use super::agents::{ConfigBody, TagBody, UpgradeBody, UploadQuery};
use super::deadletters::Replayed;
use super::egress::EgressAllow;
use super::error::Problem;
use super::events::EventsQuery;
use super::logs::{ListQuery, StreamQuery};
use super::registries::{CredentialBody, CredentialView};
use super::routes::{AuditQuery, CreateKey, CreateTenant, KeyView, NewKey, UpdateTenant};
use super::secrets::SecretBody;
use crate::agents::{AgentView, DeploySpec, ProfileSpec};
use crate::registry::{AuditEvent, DeadLetter, ModuleRecord, ProfileRecord, Tenant};
use crate::runtime::LogLine;
use crate::store::ChangeEvent;

/// A module reference (see [`crate::agents::module_ref`]): a digest or a digest prefix of at
/// least 8 lower-case hex characters, or a module name with an optional tag.
const MODULE_REF_PATTERN: &str = "^([0-9a-f]{8,64}|[a-z][a-z0-9-]{0,62}(:[a-z0-9][a-z0-9._-]{0,63})?)$";

/// A registry `host[:port]` (DNS labels of letters, digits and `-`, not starting with `-`;
/// a port from 1 to 65535).
const REGISTRY_PATTERN: &str = "^[A-Za-z0-9][A-Za-z0-9-]*(\\.[A-Za-z0-9][A-Za-z0-9-]*)*(:(6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[1-9][0-9]{0,3}))?$";

/// Error statuses every authenticated operation may answer with: a malformed path, query or
/// header (400), no or bad credentials (401), a role or tenant header the route refuses
/// (403), a tenant or object that does not exist (404), a request slower than the request
/// timeout (408), a server failure (500).
const AUTHED_ERRORS: &[u16] = &[400, 401, 403, 404, 408, 500];

/// Error statuses of an operation that takes a body, beyond [`AUTHED_ERRORS`]: a body larger
/// than the route takes (413).
const BODY_ERRORS: &[u16] = &[413];

/// The headers of an invocation's answer (its outcome, id, fuel, duration, peak memory).
const INVOCATION_HEADERS: &[(&str, &str)] = &[
    ("x-cortex-outcome", "The invocation's outcome code (`ok`, `agent_error`, `trap`, ...)"),
    ("x-cortex-invocation", "The invocation id (in the agent's log lines too)"),
    ("x-cortex-fuel", "Fuel the invocation used"),
    ("x-cortex-duration-us", "The invocation's wall time, in microseconds"),
    ("x-cortex-peak-memory", "The invocation's peak linear memory, in bytes"),
];

/// The document being built: its paths and the schemas they refer to.
#[derive(Default)]
struct Doc {
    paths: Map<String, Value>,
    schemas: BTreeMap<String, Value>,
}

impl Doc {
    /// A reference to `T`'s schema, registered with every schema it refers to.
    fn schema<T: ToSchema>(&mut self) -> Value {
        let mut deps = Vec::new();
        T::schemas(&mut deps);
        deps.push((T::name().into_owned(), T::schema()));
        for (name, schema) in deps {
            self.schemas.entry(name).or_insert_with(|| serde_json::to_value(schema).unwrap_or(Value::Null));
        }
        json!({"$ref": format!("#/components/schemas/{}", T::name())})
    }

    /// Operation `id` (`method` `path`), described by `summary`.
    fn op(&mut self, method: &'static str, path: &'static str, id: &'static str, summary: &'static str) -> Op<'_> {
        let mut params: Vec<Value> = path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .map(|name| {
                // An agent's or a profile's name follows the one name rule.
                let (schema, what) = match name {
                    "name" if path.starts_with("/v1/secrets/") => (
                        json!({"type": "string", "pattern": crate::vault::NAME_PATTERN, "maxLength": crate::vault::MAX_NAME}),
                        "secret name",
                    ),
                    "name" => (json!({"type": "string", "pattern": format!("^{}$", crate::names::NAME_RULE)}), "name"),
                    "tenant" => (json!({"type": "string", "minLength": 1}), "tenant name"),
                    "digest" => (
                        json!({"type": "string", "pattern": MODULE_REF_PATTERN}),
                        "module reference: digest (64 hex), unique digest prefix (8+ hex), name:tag or name",
                    ),
                    "host" => (json!({"type": "string", "pattern": REGISTRY_PATTERN, "maxLength": 253}), "registry host[:port]"),
                    _ => (json!({"type": "string", "minLength": 1}), "id"),
                };
                json!({"name": name, "in": "path", "required": true, "description": format!("The {what}"), "schema": schema})
            })
            .collect();
        params.push(json!({"$ref": "#/components/parameters/RequestId"}));
        let tag = match path.strip_prefix("/v1/") {
            Some(rest) if rest != "openapi.json" => rest.split('/').next().unwrap_or("server"),
            _ => "server",
        };
        let v = json!({
            "operationId": id,
            "summary": summary,
            "tags": [tag],
            "parameters": params,
            "security": [{"bearer": []}],
            "responses": {},
        });
        let mut op = Op { doc: self, method, path, v, errors: AUTHED_ERRORS.to_vec() };
        if let Some(p) = op.v["parameters"].as_array_mut() {
            p.push(json!({"$ref": "#/components/parameters/Tenant"}));
        }
        op
    }
}

/// One operation being described; added to the document by [`Op::add`].
struct Op<'a> {
    doc: &'a mut Doc,
    method: &'static str,
    path: &'static str,
    v: Value,
    errors: Vec<u16>,
}

impl Op<'_> {
    /// Open to anyone (no credentials, no tenant header); it answers no error but those of
    /// `errors`.
    fn public(mut self, errors: &[u16]) -> Self {
        if let Some(o) = self.v.as_object_mut() {
            o.remove("security");
        }
        if let Some(p) = self.v["parameters"].as_array_mut() {
            p.retain(|p| p["$ref"] != "#/components/parameters/Tenant");
        }
        self.errors = errors.to_vec();
        self
    }

    /// Its query parameters, from `Q`.
    fn query<Q: IntoParams>(mut self) -> Self {
        for p in Q::into_params(|| Some(ParameterIn::Query)) {
            if let (Ok(p), Some(list)) = (serde_json::to_value(p), self.v["parameters"].as_array_mut()) {
                list.push(p);
            }
        }
        self
    }

    /// A request header parameter.
    fn header(mut self, name: &str, description: &str, schema: Value) -> Self {
        if let Some(list) = self.v["parameters"].as_array_mut() {
            list.push(
                json!({"name": name, "in": "header", "required": false, "description": description, "schema": schema}),
            );
        }
        self
    }

    /// A JSON request body of type `T`.
    fn json<T: ToSchema>(mut self) -> Self {
        let schema = self.doc.schema::<T>();
        self.v["requestBody"] = json!({"required": true, "content": {"application/json": {"schema": schema}}});
        self.errors.extend_from_slice(BODY_ERRORS);
        self
    }

    /// A raw request body of any of the `media` types.
    fn raw(mut self, media: &[&str], description: &str) -> Self {
        let content: Map<String, Value> = media
            .iter()
            .map(|m| ((*m).to_owned(), json!({"schema": {"type": "string", "format": "binary"}})))
            .collect();
        self.v["requestBody"] = json!({"required": true, "description": description, "content": content});
        self.errors.extend_from_slice(BODY_ERRORS);
        self
    }

    /// Its body may be left out.
    fn optional_body(mut self) -> Self {
        self.v["requestBody"]["required"] = json!(false);
        self
    }

    fn response(&mut self, status: u16, body: Value) {
        self.v["responses"][status.to_string()] = body;
    }

    /// A success with a JSON body of type `T`.
    fn ok<T: ToSchema>(mut self, status: u16, description: &str) -> Self {
        let schema = self.doc.schema::<T>();
        self.response(status, json!({"description": description, "content": {"application/json": {"schema": schema}}}));
        self
    }

    /// A success with a JSON array of `T`.
    fn list<T: ToSchema>(mut self, description: &str) -> Self {
        let items = self.doc.schema::<T>();
        let schema = json!({"type": "array", "items": items});
        self.response(200, json!({"description": description, "content": {"application/json": {"schema": schema}}}));
        self
    }

    /// A success without a body.
    fn empty(mut self, status: u16, description: &str) -> Self {
        self.response(status, json!({"description": description}));
        self
    }

    /// A success with a body of `media` type described by `schema`.
    fn raw_ok(mut self, status: u16, media: &str, schema: Value, description: &str) -> Self {
        self.response(status, json!({"description": description, "content": {media: {"schema": schema}}}));
        self
    }

    /// Error statuses it answers with beyond the common ones.
    fn errors(mut self, more: &[u16]) -> Self {
        self.errors.extend_from_slice(more);
        self
    }

    /// Response headers of `statuses` (already described).
    fn response_headers(mut self, statuses: &[u16], headers: &[(&str, &str)]) -> Self {
        for s in statuses {
            for (name, description) in headers {
                self.v["responses"][s.to_string()]["headers"][*name] =
                    json!({"description": description, "schema": {"type": "string"}});
            }
        }
        self
    }

    /// Into the document, with its error responses and the request id on every response.
    fn add(mut self) {
        self.errors.sort_unstable();
        self.errors.dedup();
        for s in std::mem::take(&mut self.errors) {
            let key = s.to_string();
            if self.v["responses"].get(&key).is_none() {
                self.response(s, json!({"$ref": format!("#/components/responses/E{s}")}));
            }
        }
        if let Some(responses) = self.v["responses"].as_object_mut() {
            for r in responses.values_mut() {
                if r.get("$ref").is_none() {
                    r["headers"]["x-request-id"] = json!({"$ref": "#/components/headers/RequestId"});
                }
            }
        }
        let entry = self.doc.paths.entry(self.path.to_owned()).or_insert_with(|| json!({}));
        entry[self.method] = self.v;
    }
}

/// Every operation of the API, in the document `doc`.
fn operations(d: &mut Doc) {
    let text = json!({"type": "string"});
    // --- outside /v1 ---
    d.op("get", "/healthz", "getHealth", "Liveness").public(&[]).raw_ok(200, "text/plain", text.clone(), "`ok`").add();
    d.op(
        "get",
        "/readyz",
        "getReadiness",
        "Readiness (the node has applied the registry stream up to where it was at start, and the store answers)",
    )
    .public(&[503])
    .raw_ok(200, "text/plain", text.clone(), "`ready`")
    .add();
    let mut metrics = d
        .op(
            "get",
            "/metrics",
            "getMetrics",
            "Prometheus metrics (open, or for `Authorization: Bearer <metrics token>` when `[metrics] token_file` is set)",
        )
        .public(&[401, 503])
        .raw_ok(200, "text/plain", text.clone(), "The Prometheus text format");
    metrics.v["security"] = json!([{}, {"bearer": []}]);
    metrics.add();
    d.op("get", "/v1/openapi.json", "getOpenApi", "This document")
        .public(&[])
        .raw_ok(200, "application/json", json!({"type": "object"}), "The OpenAPI document")
        .add();

    // --- tenants, keys, audit ---
    d.op("post", "/v1/tenants", "createTenant", "Create a tenant (platform-admin)")
        .json::<CreateTenant>()
        .ok::<Tenant>(201, "The tenant")
        .errors(&[409])
        .add();
    d.op("get", "/v1/tenants", "listTenants", "List tenants (platform-admin)").list::<Tenant>("The tenants").add();
    d.op("get", "/v1/cluster", "getCluster", "The nodes, whether each is live, and what each owns (platform-admin)")
        .ok::<super::cluster::ClusterView>(200, "The cluster as the answering node sees it")
        .add();
    d.op("get", "/v1/tenants/{tenant}", "getTenant", "Get a tenant").ok::<Tenant>(200, "The tenant").add();
    d.op("patch", "/v1/tenants/{tenant}", "updateTenant", "Change the quotas named, keep the others (platform-admin)")
        .json::<UpdateTenant>()
        .ok::<Tenant>(200, "The tenant")
        .errors(&[409])
        .add();
    d.op("delete", "/v1/tenants/{tenant}", "deleteTenant", "Delete a tenant and everything it owns (platform-admin)")
        .empty(204, "Deleted")
        .errors(&[409])
        .add();
    d.op("post", "/v1/keys", "createKey", "Create an API key (shown once)")
        .json::<CreateKey>()
        .ok::<NewKey>(201, "The key, with its secret (shown only now)")
        .add();
    d.op("get", "/v1/keys", "listKeys", "List API keys").list::<KeyView>("The tenant's keys").add();
    d.op("delete", "/v1/keys/{id}", "revokeKey", "Revoke an API key").empty(204, "Revoked").add();
    d.op("get", "/v1/audit", "listAudit", "List audit events")
        .query::<AuditQuery>()
        .list::<AuditEvent>("The events, oldest first")
        .add();
    d.op(
        "get",
        "/v1/audit/export",
        "exportAudit",
        "The audit log after `since` as JSON lines (one AuditEvent a line, oldest first), streamed",
    )
    .query::<super::audit_export::ExportQuery>()
    .raw_ok(200, "application/x-ndjson", json!({"type": "string"}), "The events, one JSON object a line")
    .add();

    // --- profiles ---
    d.op("get", "/v1/profiles", "listProfiles", "List the tenant's resource profiles")
        .list::<ProfileRecord>("The profiles")
        .add();
    d.op("get", "/v1/profiles/{name}", "getProfile", "Get a resource profile")
        .ok::<ProfileRecord>(200, "The profile")
        .add();
    d.op(
        "put",
        "/v1/profiles/{name}",
        "putProfile",
        "Create or replace a resource profile: limits (fuel, memory_bytes, timeout_ms) and max_concurrency, each above 0 and at most the tenant's quotas (tenant-admin)",
    )
    .json::<ProfileSpec>()
    .ok::<ProfileRecord>(200, "Replaced")
    .ok::<ProfileRecord>(201, "Created")
    .errors(&[409])
    .add();
    d.op(
        "delete",
        "/v1/profiles/{name}",
        "deleteProfile",
        "Delete a resource profile no agent was deployed with (tenant-admin)",
    )
    .empty(204, "Deleted")
    .errors(&[409])
    .add();

    // --- the change feed ---
    d.op("get", "/v1/events", "listEvents", "The tenant's change feed after a sequence number")
        .query::<EventsQuery>()
        .list::<ChangeEvent>("The events, in commit order")
        .add();
    d.op(
        "get",
        "/v1/events/stream",
        "streamEvents",
        "The change feed as server-sent events: `event: change` with a ChangeEvent as data and its sequence number as id; `event: end` with a Problem when the credentials lapse",
    )
    .query::<EventsQuery>()
    .header(super::events::LAST_EVENT_ID, "Resume after this event id (sent by a reconnecting EventSource)", json!({"type": "string", "pattern": "^[0-9]+$"}))
    .raw_ok(200, "text/event-stream", text.clone(), "The stream")
    .add();

    // --- modules ---
    d.op(
        "post",
        "/v1/modules",
        "uploadModule",
        "Upload a component (raw body; name and tag label it, the tag moving to it); idempotent by digest: 201 compiled, 200 known, 202 compiling in the background (large uploads; poll the Location until status is ready or failed)",
    )
    .query::<UploadQuery>()
    .raw(&["application/wasm", "application/octet-stream"], "The component's bytes")
    .ok::<ModuleRecord>(200, "Uploaded before: the same record")
    .ok::<ModuleRecord>(201, "Uploaded and compiled")
    .ok::<ModuleRecord>(202, "Uploaded; compiling in the background (status compiling)")
    .errors(&[409, 422, 429])
    .add();
    d.op("get", "/v1/modules", "listModules", "List modules").list::<ModuleRecord>("The tenant's modules").add();
    d.op(
        "get",
        "/v1/modules/{digest}",
        "getModule",
        "Get a module by reference: digest, unique digest prefix (8+ hex; 409 ambiguous_module_ref), name:tag or name (name:latest); HEAD tells whether the server has it",
    )
    .ok::<ModuleRecord>(200, "The module")
    .errors(&[409])
    .add();
    d.op(
        "get",
        "/v1/modules/{digest}/wasm",
        "downloadModule",
        "Download a module's component as uploaded (by reference)",
    )
    .raw_ok(200, "application/wasm", json!({"type": "string", "format": "binary"}), "The component's bytes")
    .errors(&[409])
    .add();
    d.op("delete", "/v1/modules/{digest}", "deleteModule", "Delete a module no agent uses (by reference)")
        .empty(204, "Deleted")
        .errors(&[409])
        .add();
    d.op(
        "post",
        "/v1/modules/{digest}/tags",
        "tagModule",
        "Name a module and put a tag on it (tag default latest), moving the tag from the module that had it",
    )
    .json::<TagBody>()
    .ok::<ModuleRecord>(200, "The module")
    .errors(&[409])
    .add();

    // --- OCI registry credentials ---
    d.op(
        "get",
        "/v1/registries",
        "listRegistryCredentials",
        "List the tenant's registry credentials, without their passwords (tenant-admin)",
    )
    .list::<CredentialView>("The credentials (no passwords)")
    .add();
    d.op(
        "put",
        "/v1/registries/{host}",
        "putRegistryCredential",
        "Store the tenant's credentials for an OCI registry (host[:port]): used by its oci:// deploys only, never returned (tenant-admin)",
    )
    .json::<CredentialBody>()
    .ok::<CredentialView>(201, "Stored (new credentials)")
    .ok::<CredentialView>(200, "Stored (replacing earlier credentials)")
    .add();
    d.op(
        "delete",
        "/v1/registries/{host}",
        "deleteRegistryCredential",
        "Delete the tenant's credentials for a registry (tenant-admin)",
    )
    .empty(204, "Deleted")
    .add();

    // --- backup ---
    d.op(
        "get",
        "/v1/admin/backup",
        "backupStore",
        "A backup of the whole store from one consistent snapshot, streamed (platform-admin; on ArangoDB from one read-only stream transaction; 409 backup_unsupported on a backend without snapshots)",
    )
    .raw_ok(200, "application/octet-stream", json!({"type": "string", "format": "binary"}), "The backup file (x-cortex-snapshot: the snapshot point)")
    .errors(&[409])
    .add();

    // --- secrets ---
    d.op(
        "get",
        "/v1/secrets",
        "listSecrets",
        "List the tenant's secrets: names, versions, times, key ids; never values (tenant-admin)",
    )
    .list::<crate::vault::SecretMeta>("The secrets (no values)")
    .add();
    d.op("get", "/v1/secrets/{name}", "getSecret", "A secret's metadata; never its value (tenant-admin)")
        .ok::<crate::vault::SecretMeta>(200, "The secret (no value)")
        .add();
    d.op(
        "put",
        "/v1/secrets/{name}",
        "putSecret",
        "Store a secret, encrypted at rest; the value is never returned (tenant-admin; 409 too_many_secrets past [secrets] max_per_tenant; 400 invalid_secret_name, empty_secret, secret_too_large)",
    )
    .json::<SecretBody>()
    .ok::<crate::vault::SecretMeta>(201, "Stored (a new secret)")
    .ok::<crate::vault::SecretMeta>(200, "Stored (replacing the value; version bumped)")
    .errors(&[409])
    .add();
    d.op("delete", "/v1/secrets/{name}", "deleteSecret", "Delete a secret (tenant-admin)").empty(204, "Deleted").add();
    // --- egress allow-list ---
    d.op(
        "get",
        "/v1/egress",
        "getEgressAllowList",
        "The tenant's egress allow-list: URL prefixes its agents' grants must stay within (tenant-admin)",
    )
    .ok::<EgressAllow>(200, "The allow-list (null: none set)")
    .add();
    d.op(
        "put",
        "/v1/egress",
        "putEgressAllowList",
        "Set the tenant's egress allow-list; deploys whose grants are outside it are refused (tenant-admin)",
    )
    .json::<EgressAllow>()
    .ok::<EgressAllow>(200, "The allow-list as stored")
    .add();

    // --- agents ---
    d.op(
        "post",
        "/v1/agents",
        "deployAgent",
        "Deploy an agent (runs init); module: a module reference (digest, unique digest prefix, name:tag; 409 module_not_ready while it compiles) or an oci://host[:port]/name:tag (or @sha256:digest) reference the server pulls from an allowed registry; a named profile fills the limits and max_concurrency the spec leaves out; queue and queue_timeout_ms size its wait queue",
    )
    .json::<DeploySpec>()
    .ok::<AgentView>(201, "The agent")
    .errors(&[409, 422, 429])
    .add();
    d.op("get", "/v1/agents", "listAgents", "List agents").list::<AgentView>("The tenant's agents").add();
    d.op(
        "get",
        "/v1/agents/{name}",
        "getAgent",
        "Get an agent with its counters, health, circuit breaker and last automatic rollback",
    )
    .ok::<AgentView>(200, "The agent")
    .add();
    d.op("delete", "/v1/agents/{name}", "deleteAgent", "Delete an agent").empty(204, "Deleted").add();
    d.op("put", "/v1/agents/{name}/config", "updateAgentConfig", "Replace the config (hot reload through init)")
        .json::<ConfigBody>()
        .ok::<AgentView>(200, "The agent")
        .errors(&[409, 422])
        .add();
    d.op(
        "post",
        "/v1/agents/{name}/upgrade",
        "upgradeAgent",
        "Run another module (a module reference, or an oci:// reference, resolved again; with config, the new configuration in the same step; init first); with a probation, rolled back by the host if it fails it",
    )
    .json::<UpgradeBody>()
    .ok::<AgentView>(200, "The agent")
    .errors(&[409, 422])
    .add();
    d.op("post", "/v1/agents/{name}/rollback", "rollbackAgent", "Go back to the module before the last upgrade")
        .ok::<AgentView>(200, "The agent")
        .errors(&[409, 422])
        .add();
    d.op("post", "/v1/agents/{name}/stop", "stopAgent", "Stop taking invocations")
        .ok::<AgentView>(200, "The agent")
        .errors(&[409])
        .add();
    d.op("post", "/v1/agents/{name}/start", "startAgent", "Take invocations again")
        .ok::<AgentView>(200, "The agent")
        .errors(&[409, 422])
        .add();
    d.op(
        "post",
        "/v1/agents/{name}/invoke",
        "invokeAgent",
        "Invoke handle: bytes in, bytes out. An outcome other than ok is a problem: 422 for the agent's own error (agent_code, agent_message) or a limit, 502 trap, 504 deadline_exceeded; 429 over the rate or concurrency quota, 503 circuit_open (Retry-After), pool_full or queue_timeout (Retry-After: 1)",
    )
    .raw(&["application/octet-stream"], "The input, any bytes (none: empty)")
    .optional_body()
    .raw_ok(200, "application/octet-stream", json!({"type": "string", "format": "binary"}), "The agent's output")
    .empty(204, "The agent returned no output")
    .errors(&[409, 422, 429, 502, 503, 504])
    .response_headers(&[200, 204], INVOCATION_HEADERS)
    .add();
    d.op(
        "get",
        "/v1/agents/{name}/logs",
        "getAgentLogs",
        "Read the agent's log (since or tail, limit): lines with seq, time_ms, invocation, stream, level, message and fields; kept across restarts",
    )
    .query::<ListQuery>()
    .list::<LogLine>("The lines, oldest first")
    .add();
    d.op(
        "get",
        "/v1/agents/{name}/logs/stream",
        "streamAgentLogs",
        "The agent's log as server-sent events: `event: log` with a LogLine as data and its seq as id; `event: end` with a Problem when the credentials lapse or the agent is deleted",
    )
    .query::<StreamQuery>()
    .header(super::events::LAST_EVENT_ID, "Resume after this line (sent by a reconnecting EventSource)", json!({"type": "string", "pattern": "^[0-9]+$"}))
    .raw_ok(200, "text/event-stream", text.clone(), "The stream")
    .add();
    d.op(
        "get",
        "/v1/agents/{name}/deadletters",
        "listDeadLetters",
        "List the change batches and messages the agent failed",
    )
    .list::<DeadLetter>("The dead letters")
    .add();
    d.op("delete", "/v1/agents/{name}/deadletters/{id}", "discardDeadLetter", "Discard a dead letter")
        .empty(204, "Discarded")
        .add();
    d.op(
        "post",
        "/v1/agents/{name}/deadletters/{id}/replay",
        "replayDeadLetter",
        "Deliver a dead letter again (deleted on success)",
    )
    .ok::<Replayed>(200, "Delivered")
    .errors(&[409, 422, 429])
    .add();
    workflow_operations(d);
}

/// The operations of `/v1/workflows` (see [`super::workflows`]).
fn workflow_operations(d: &mut Doc) {
    use super::workflows::{Resolve, RunView, RunsQuery, StartRun, VersionQuery};
    use crate::workflows::{Definition, WorkflowRecord};
    d.op("get", "/v1/workflows", "listWorkflows", "List the tenant's workflows (the latest version of each)")
        .list::<WorkflowRecord>("The workflows, by name")
        .add();
    d.op("put", "/v1/workflows/{name}", "putWorkflow", "Store a new version of a workflow, validated (`unknown_agent`, `cycle`, `missing_reference`, `bad_expression`, `bad_for_each`, `duplicate_step`, `unknown_compensation`, `unknown_dependency`, `invalid_workflow`)")
        .json::<Definition>()
        .ok::<WorkflowRecord>(201, "Stored as a new version")
        .ok::<WorkflowRecord>(200, "The same as the latest version: nothing stored")
        .errors(BODY_ERRORS)
        .add();
    d.op("get", "/v1/workflows/{name}", "getWorkflow", "Read a workflow (the latest version, or `version`)")
        .query::<VersionQuery>()
        .ok::<WorkflowRecord>(200, "The workflow")
        .add();
    d.op("delete", "/v1/workflows/{name}", "deleteWorkflow", "Delete every version of a workflow (its runs go on)")
        .empty(204, "Deleted")
        .add();
    d.op(
        "post",
        "/v1/workflows/{name}/runs",
        "startWorkflowRun",
        "Start a run (with an idempotency key, the run started first with it)",
    )
    .json::<StartRun>()
    .ok::<RunView>(201, "Started")
    .ok::<RunView>(200, "The run of the same idempotency key")
    .errors(BODY_ERRORS)
    .add();
    d.op("get", "/v1/workflows/{name}/runs", "listWorkflowRuns", "List the workflow's runs, newest first")
        .query::<RunsQuery>()
        .list::<RunView>("The runs")
        .add();
    d.op(
        "get",
        "/v1/workflows/{name}/runs/{id}",
        "getWorkflowRun",
        "Read a run: its state and each step's state, attempts, timings, outcome and output (bounded)",
    )
    .ok::<RunView>(200, "The run")
    .add();
    d.op(
        "post",
        "/v1/workflows/{name}/runs/{id}/cancel",
        "cancelWorkflowRun",
        "Cancel a run: it ends once its running calls return",
    )
    .ok::<RunView>(202, "Cancelling")
    .errors(&[409])
    .add();
    d.op(
        "post",
        "/v1/workflows/{name}/runs/{id}/resolve",
        "resolveWorkflowRun",
        "Resolve a run in needs_attention: retry or skip its stuck step",
    )
    .json::<Resolve>()
    .ok::<RunView>(200, "The run goes on")
    .errors(&[409, 413])
    .add();
    d.op(
        "get",
        "/v1/workflows/{name}/runs/{id}/steps/{step}/output",
        "getWorkflowStepOutput",
        "The whole output of a step",
    )
    .raw_ok(200, "application/json", json!({}), "The output (JSON)")
    .add();
}

/// The reason phrase of an error status.
fn reason(status: u16) -> &'static str {
    axum::http::StatusCode::from_u16(status).ok().and_then(|s| s.canonical_reason()).unwrap_or("Error")
}

/// Unsigned integers as the server reads them: utoipa gives a `u32` the format `int32` and
/// a `u64` or `usize` the format `int64` (or none), whose ranges are not theirs; each gets
/// its own `maximum` instead.
fn unsigned_bounds(v: &mut Value) {
    match v {
        Value::Object(o) => {
            let integer = match o.get("type") {
                Some(Value::String(t)) => t == "integer",
                Some(Value::Array(ts)) => ts.iter().any(|t| t == "integer"),
                _ => false,
            };
            if integer
                && o.get("minimum").and_then(Value::as_f64).is_some_and(|m| m >= 0.0)
                && !o.contains_key("maximum")
            {
                let max = match o.get("format").and_then(Value::as_str) {
                    Some("int32") => json!(u32::MAX),
                    _ => json!(u64::MAX),
                };
                o.remove("format");
                o.insert("maximum".into(), max);
            }
            o.values_mut().for_each(unsigned_bounds);
        }
        Value::Array(a) => a.iter_mut().for_each(unsigned_bounds),
        _ => {}
    }
}

/// The document.
pub fn openapi() -> Value {
    let mut d = Doc::default();
    operations(&mut d);
    let problem = d.schema::<Problem>();
    d.schemas.values_mut().for_each(unsigned_bounds);
    d.paths.values_mut().for_each(unsigned_bounds);
    let statuses: std::collections::BTreeSet<u16> = d
        .paths
        .values()
        .filter_map(Value::as_object)
        .flat_map(|ops| ops.values())
        .filter_map(|op| op["responses"].as_object())
        .flat_map(|r| r.keys())
        .filter_map(|k| k.parse::<u16>().ok())
        .filter(|s| *s >= 400)
        .collect();
    let retry = json!({"description": "Seconds until a retry may succeed", "schema": {"type": "string"}});
    let responses: Map<String, Value> = statuses
        .into_iter()
        .map(|s| {
            let mut r = json!({
                "description": reason(s),
                "headers": {"x-request-id": {"$ref": "#/components/headers/RequestId"}},
                "content": {"application/problem+json": {"schema": problem.clone()}},
            });
            if s == 429 || s == 503 {
                r["headers"]["retry-after"] = retry.clone();
            }
            (format!("E{s}"), r)
        })
        .collect();
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Cortex",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "The Cortex HTTP API. Errors are RFC 9457 problem+json with a stable `code` and the request's `request_id`; every response carries `x-request-id` (a client's own, 1 to 128 visible ASCII characters, is kept). With tracing on (`[telemetry]`), W3C `traceparent` and `tracestate` request headers continue the caller's trace, and every response carries the `traceparent` of the server's span (and the `tracestate`, if the trace has one)."
        },
        "paths": d.paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "description": "A JWT, or an API key ck_<id>_<secret>"}},
            "schemas": d.schemas,
            "responses": responses,
            "parameters": {
                "RequestId": {"name": "x-request-id", "in": "header", "required": false,
                    "description": "The request's id, kept if 1 to 128 visible ASCII characters (else the server makes one)",
                    "schema": {"type": "string"}},
                "Tenant": {"name": super::TENANT_HEADER, "in": "header", "required": false,
                    "description": "The tenant a platform-admin acts in (others may only name their own)",
                    "schema": {"type": "string"}}
            },
            "headers": {
                "RequestId": {"description": "The request's id (also `request_id` in a problem, and in the server's log)",
                    "schema": {"type": "string"}}
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use axum::http::Method;

    use super::*;

    const PUBLIC: &[&str] = &["/healthz", "/readyz", "/metrics", "/v1/openapi.json"];

    /// Every authenticated operation is one the guard's table knows, and every method the
    /// table knows on a documented path is documented.
    #[test]
    fn the_document_and_the_guards_route_table_agree() {
        let doc = openapi();
        let methods = [Method::GET, Method::POST, Method::PUT, Method::PATCH, Method::DELETE];
        let mut ids = std::collections::HashSet::new();
        for (path, ops) in doc["paths"].as_object().unwrap() {
            for m in &methods {
                let documented = ops.get(m.as_str().to_lowercase()).is_some();
                if PUBLIC.contains(&path.as_str()) {
                    assert!(*m == Method::GET || !documented, "{m} {path}: only GET is served there");
                    continue;
                }
                assert_eq!(super::super::route_action(m, path).is_some(), documented, "{m} {path}");
            }
            for (method, op) in ops.as_object().unwrap() {
                let id = op["operationId"].as_str().unwrap();
                assert!(ids.insert(id.to_owned()), "operationId {id} twice");
                assert!(
                    id.chars().next().unwrap().is_ascii_lowercase() && id.chars().all(|c| c.is_ascii_alphanumeric())
                );
                let responses = op["responses"].as_object().unwrap();
                assert!(responses.keys().any(|k| k.starts_with('2')), "{method} {path}: no success");
                if !PUBLIC.contains(&path.as_str()) {
                    for s in ["400", "401", "403", "404", "500"] {
                        assert!(responses.contains_key(s), "{method} {path}: no {s}");
                    }
                }
            }
        }
        // Every reference resolves.
        let text = doc.to_string();
        for r in text.split("\"$ref\":\"").skip(1) {
            let target = &r[..r.find('"').unwrap()];
            let mut at = &doc;
            for seg in target.trim_start_matches("#/").split('/') {
                at = &at[seg];
            }
            assert!(!at.is_null(), "{target} is not in the document");
        }
    }

    /// The request and response bodies are described field by field (no bare objects).
    #[test]
    fn bodies_have_schemas_from_the_types() {
        let doc = openapi();
        let deploy = &doc["components"]["schemas"]["DeploySpec"];
        assert!(deploy["properties"]["module"].is_object(), "{deploy}");
        assert!(deploy["required"].as_array().unwrap().contains(&json!("name")), "{deploy}");
        let problem = &doc["components"]["schemas"]["Problem"];
        for f in ["type", "title", "status", "detail", "code", "request_id", "agent_code"] {
            assert!(problem["properties"][f].is_object(), "{f}: {problem}");
        }
        // Each node's load in `GET /v1/cluster` (what the operator's autoscaler reads).
        let load = &doc["components"]["schemas"]["NodeLoad"];
        for f in ["in_flight", "queued", "mailbox", "wasm_seconds_per_second"] {
            assert!(load["properties"][f].is_object(), "{f}: {load}");
        }
        let audit = &doc["paths"]["/v1/audit"]["get"]["parameters"];
        for q in ["since", "limit", "tenant", "action", "actor"] {
            assert!(audit.as_array().unwrap().iter().any(|p| p["name"] == q && p["in"] == "query"), "{q}: {audit}");
        }
    }
}
