//! The OpenAPI 3.1 document served at `/v1/openapi.json`, generated from one route table.
//! A test requests every route listed here against a live server, so the document cannot
//! drift from the router.

use serde_json::{Value, json};

/// Every route: method, path, summary, request body kind (`json`, `wasm`, `bytes`, none).
pub const ROUTES: &[(&str, &str, &str, Option<&str>)] = &[
    ("get", "/healthz", "Liveness", None),
    ("get", "/readyz", "Readiness (the store answers)", None),
    ("get", "/metrics", "Prometheus metrics", None),
    ("get", "/v1/openapi.json", "This document", None),
    ("post", "/v1/tenants", "Create a tenant (platform-admin)", Some("json")),
    ("get", "/v1/tenants", "List tenants (platform-admin)", None),
    ("get", "/v1/tenants/{tenant}", "Get a tenant", None),
    ("patch", "/v1/tenants/{tenant}", "Change the quotas named, keep the others (platform-admin)", Some("json")),
    ("delete", "/v1/tenants/{tenant}", "Delete a tenant and everything it owns (platform-admin)", None),
    ("post", "/v1/keys", "Create an API key (shown once)", Some("json")),
    ("get", "/v1/keys", "List API keys", None),
    ("delete", "/v1/keys/{id}", "Revoke an API key", None),
    ("get", "/v1/audit", "List audit events (since, limit, tenant, action, actor)", None),
    ("get", "/v1/profiles", "List the tenant's resource profiles", None),
    ("get", "/v1/profiles/{name}", "Get a resource profile", None),
    (
        "put",
        "/v1/profiles/{name}",
        "Create or replace a resource profile: limits (fuel, memory_bytes, timeout_ms) and max_concurrency, each above 0 and at most the tenant's quotas (tenant-admin)",
        Some("json"),
    ),
    ("delete", "/v1/profiles/{name}", "Delete a resource profile no agent was deployed with (tenant-admin)", None),
    ("get", "/v1/registries", "List the tenant's registry credentials, without their passwords (tenant-admin)", None),
    (
        "put",
        "/v1/registries/{host}",
        "Store the tenant's credentials for an OCI registry (host[:port]): username and password, used by its oci:// deploys only, never returned (tenant-admin)",
        Some("json"),
    ),
    ("delete", "/v1/registries/{host}", "Delete the tenant's credentials for a registry (tenant-admin)", None),
    ("get", "/v1/events", "The tenant's change feed after a sequence number (since, limit)", None),
    ("get", "/v1/events/stream", "The change feed as server-sent events (since; resume from the last id)", None),
    (
        "post",
        "/v1/modules",
        "Upload a component (raw body; ?name=&tag= label it, the tag moving to it); idempotent by digest: 201 compiled, 200 known, 202 compiling in the background (large uploads; poll the Location until status is ready or failed)",
        Some("wasm"),
    ),
    ("get", "/v1/modules", "List modules", None),
    (
        "get",
        "/v1/modules/{digest}",
        "Get a module by reference: digest, unique digest prefix (8+ hex; 409 ambiguous_module_ref), name:tag or name (name:latest); HEAD to check the server has it",
        None,
    ),
    ("delete", "/v1/modules/{digest}", "Delete a module no agent uses (by reference)", None),
    (
        "post",
        "/v1/modules/{digest}/tags",
        "Name a module and put a tag on it ({name, tag}; tag default latest), moving the tag from the module that had it",
        Some("json"),
    ),
    (
        "post",
        "/v1/agents",
        "Deploy an agent (runs init); module: a module reference (digest, unique digest prefix, name:tag; 409 module_not_ready while it compiles) or an oci://host[:port]/name:tag (or @sha256:digest) reference the server pulls from an allowed registry; a named profile fills the limits and max_concurrency the spec leaves out; queue and queue_timeout_ms size its wait queue",
        Some("json"),
    ),
    ("get", "/v1/agents", "List agents", None),
    (
        "get",
        "/v1/agents/{name}",
        "Get an agent with its counters, health, circuit breaker and last automatic rollback",
        None,
    ),
    ("delete", "/v1/agents/{name}", "Delete an agent", None),
    ("put", "/v1/agents/{name}/config", "Replace the config (hot reload through init)", Some("json")),
    (
        "post",
        "/v1/agents/{name}/upgrade",
        "Run another module (a module reference, or an oci:// reference, resolved again; with config, the new configuration in the same step; init first); with a probation, rolled back by the host if it fails it",
        Some("json"),
    ),
    ("post", "/v1/agents/{name}/rollback", "Go back to the module before the last upgrade", None),
    ("post", "/v1/agents/{name}/stop", "Stop taking invocations", None),
    ("post", "/v1/agents/{name}/start", "Take invocations again", None),
    (
        "post",
        "/v1/agents/{name}/invoke",
        "Invoke handle: bytes in, bytes out (503 circuit_open while its breaker is open; 503 pool_full or queue_timeout with Retry-After when the agent is busy)",
        Some("bytes"),
    ),
    (
        "get",
        "/v1/agents/{name}/logs",
        "Read the agent's log (since or tail, limit): lines with seq, time_ms, invocation, stream, level, message and fields; kept across restarts",
        None,
    ),
    (
        "get",
        "/v1/agents/{name}/logs/stream",
        "The agent's log as server-sent events, id = seq (since or tail, follow, limit; resume with Last-Event-ID)",
        None,
    ),
    ("get", "/v1/agents/{name}/deadletters", "List the change batches and messages the agent failed", None),
    ("delete", "/v1/agents/{name}/deadletters/{id}", "Discard a dead letter", None),
    ("post", "/v1/agents/{name}/deadletters/{id}/replay", "Deliver a dead letter again (deleted on success)", None),
];

/// The document.
pub fn openapi() -> Value {
    let mut paths = serde_json::Map::new();
    for (method, path, summary, body) in ROUTES {
        let params: Vec<Value> = path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .map(|name| {
                // An agent's or a profile's name follows the one name rule.
                let schema = if name == "name" {
                    json!({"type": "string", "pattern": format!("^{}$", crate::names::NAME_RULE)})
                } else {
                    json!({"type": "string"})
                };
                json!({"name": name, "in": "path", "required": true, "schema": schema})
            })
            .collect();
        let mut op = json!({
            "summary": summary,
            "parameters": params,
            "responses": {
                "2XX": {"description": "success"},
                "default": {"description": "error", "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}}
            }
        });
        if !path.starts_with("/healthz")
            && !path.starts_with("/readyz")
            && !path.starts_with("/metrics")
            && *path != "/v1/openapi.json"
        {
            op["security"] = json!([{"bearer": []}]);
        }
        if let Some(kind) = body {
            let media = match *kind {
                "json" => "application/json",
                "wasm" => "application/wasm",
                _ => "application/octet-stream",
            };
            op["requestBody"] = json!({"required": true, "content": {media: {}}});
        }
        let entry = paths.entry((*path).to_owned()).or_insert_with(|| json!({}));
        entry[*method] = op;
    }
    json!({
        "openapi": "3.1.0",
        "info": {"title": "Cortex", "version": env!("CARGO_PKG_VERSION")},
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "description": "A JWT, or an API key ck_<id>_<secret>"}},
            "schemas": {"Problem": {"type": "object", "required": ["type", "title", "status", "detail", "code"], "properties": {
                "type": {"type": "string"}, "title": {"type": "string"}, "status": {"type": "integer"},
                "detail": {"type": "string"}, "code": {"type": "string"}
            }}}
        }
    })
}
