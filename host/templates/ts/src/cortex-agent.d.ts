// TypeScript declarations of the imports of the cortex:agent world (wit/), in
// componentize-js's mapping: u64 -> bigint, option<T> -> T | undefined, list<u8> ->
// Uint8Array, enums -> string literals, variants -> { tag, val }. A `result` import
// returns its `ok` value and throws on `err`, with the WIT error on `.payload`.

declare module 'cortex:agent/types@0.1.0' {
  export interface AgentError {
    code: string;
    message: string;
  }
  export type ChangeOp = 'put' | 'delete';
  export interface ChangeEvent {
    seq: bigint;
    collection: string;
    key: string;
    op: ChangeOp;
    revision: bigint;
  }
}

declare module 'cortex:agent/runtime@0.1.0' {
  export interface Identity {
    tenant: string;
    agent: string;
    invocation: string;
  }
  export type Level = 'trace' | 'debug' | 'info' | 'warn' | 'error';
  export function whoami(): Identity;
  export function config(key: string): string | undefined;
  export function configAll(): [string, string][];
  export function nowMs(): bigint;
  export function log(level: Level, message: string, fields: [string, string][]): void;
}

declare module 'cortex:agent/documents@0.1.0' {
  export type Revision = bigint;
  export interface Document {
    key: string;
    /** JSON text. */
    value: string;
    revision: Revision;
  }
  export type Error =
    | { tag: 'conflict'; val: Revision }
    | { tag: 'invalid-key'; val: string }
    | { tag: 'too-large'; val: string }
    | { tag: 'invalid-value'; val: string }
    | { tag: 'quota-exceeded'; val: string }
    | { tag: 'unavailable'; val: string };
  export interface Page {
    documents: Document[];
    next?: string;
  }
  export interface PutOp {
    collection: string;
    key: string;
    value: string;
    expected?: Revision;
  }
  export interface DeleteOp {
    collection: string;
    key: string;
    expected?: Revision;
  }
  export type Op = { tag: 'put'; val: PutOp } | { tag: 'delete'; val: DeleteOp };
  export function get(collection: string, key: string): Document | undefined;
  export function put(collection: string, key: string, value: string, expected: Revision | undefined): Revision;
  function _delete(collection: string, key: string, expected: Revision | undefined): boolean;
  export { _delete as delete };
  export function list(collection: string, prefix: string, limit: number, cursor: string | undefined): Page;
  export function transact(ops: Op[]): Revision[];
}

declare module 'cortex:agent/graph@0.1.0' {
  export type Direction = 'outgoing' | 'incoming' | 'both';
  export interface Edge {
    from: string;
    to: string;
    kind: string;
    /** JSON text. */
    attributes: string;
  }
  export type Error =
    | { tag: 'unknown-agent'; val: string }
    | { tag: 'invalid-argument'; val: string }
    | { tag: 'too-large'; val: string }
    | { tag: 'unavailable'; val: string };
  export function link(from: string, to: string, kind: string, attributes: string): void;
  export function unlink(from: string, to: string, kind: string): boolean;
  export function neighbours(agent: string, kind: string | undefined, direction: Direction, limit: number): Edge[];
  export function traverse(
    start: string,
    kind: string | undefined,
    direction: Direction,
    maxDepth: number,
    limit: number,
  ): string[];
}

declare module 'cortex:agent/messaging@0.1.0' {
  import type { AgentError } from 'cortex:agent/types@0.1.0';
  export type Error =
    | { tag: 'unknown-agent'; val: string }
    | { tag: 'depth-exceeded' }
    | { tag: 'deadline-exceeded' }
    | { tag: 'agent'; val: AgentError }
    | { tag: 'too-large'; val: string }
    | { tag: 'invalid-argument'; val: string }
    | { tag: 'unavailable'; val: string };
  export function send(agent: string, body: Uint8Array, idempotencyKey: string | undefined): void;
  export function call(agent: string, body: Uint8Array): Uint8Array | undefined;
  export function publish(topic: string, body: Uint8Array): void;
}
