// A use of the client generated from the served OpenAPI document (gen/api.ts, written by
// tests/all/openapi_doc.rs with openapi-typescript): `tsc --noEmit --strict` must accept it.
// Each `@ts-expect-error` proves a type is precise (not `unknown` or `any`): if it were not,
// the line would compile and tsc would report the unused directive.
import type { components, operations, paths } from "./gen/api";

type Schemas = components["schemas"];

// A deploy body: name and module are required, the rest optional and typed.
type Deploy = paths["/v1/agents"]["post"]["requestBody"]["content"]["application/json"];
export const deploy: Deploy = { name: "svc", module: "sha256:00", config: { greeting: "hi" }, queue: 4 };
// @ts-expect-error: a deploy names its module
export const noModule: Deploy = { name: "svc" };
// @ts-expect-error: config values are strings
export const badConfig: Deploy = { name: "svc", module: "m", config: { n: 1 } };

// The agent view: record fields, counters and health, flattened together.
type Agent = paths["/v1/agents/{name}"]["get"]["responses"][200]["content"]["application/json"];
export function summary(a: Agent): string {
    const health: "healthy" | "degraded" | "failing" | "stopped" = a.health;
    const running: number = a.running_now;
    const circuit: Schemas["Circuit"] = a.circuit;
    return `${a.name} ${a.module} ${a.status} ${health} ${circuit} ${running} ${a.messages.pending}`;
}
// @ts-expect-error: no such field
export const nope = (a: Agent) => a.no_such_field;

// Query parameters of the audit log.
type AuditQuery = NonNullable<operations["listAudit"]["parameters"]["query"]>;
export const q: AuditQuery = { since: 3, limit: 10, tenant: "acme", action: "POST", actor: "dev" };
// @ts-expect-error: since is a number
export const badQuery: AuditQuery = { since: "3" };

// Every error is a problem with a code and the request id.
type Problem = paths["/v1/agents/{name}/invoke"]["post"]["responses"][429]["content"]["application/problem+json"];
export function describe(p: Problem): string {
    return `${p.status} ${p.code}: ${p.detail} (request ${p.request_id ?? "?"}, agent ${p.agent_code ?? "-"})`;
}

// Path parameters, and a role for a new key.
export const invokePath: operations["invokeAgent"]["parameters"]["path"] = { name: "svc" };
export const key: Schemas["CreateKey"] = { role: "developer", name: "ci" };
// @ts-expect-error: not a role
export const badKey: Schemas["CreateKey"] = { role: "root" };
