// TypeScript declarations of the WIT imports of the language-agent world
// (wit/world.wit -> cortex:agent/runtime and /documents), in componentize-js's mapping:
// u64 -> bigint, option<T> -> T | undefined, list<u8> -> Uint8Array, enums -> string
// literals, variants -> { tag, val }; a `result` import returns `ok` and throws on `err`
// with the error value on `.payload`. `scripts/build-languages.sh` checks the WIT hash
// recorded below against wit/ (jco's type generator cannot read directories here).
// wit-sha256: see ts/WIT.sha256

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
  /** @throws {{ payload: Error }} */
  export function get(collection: string, key: string): Document | undefined;
  /** @throws {{ payload: Error }} */
  export function put(collection: string, key: string, value: string, expected: Revision | undefined): Revision;
  /** @throws {{ payload: Error }} */
  function _delete(collection: string, key: string, expected: Revision | undefined): boolean;
  export { _delete as delete };
  /** @throws {{ payload: Error }} */
  export function list(collection: string, prefix: string, limit: number, cursor: string | undefined): Page;
  /** @throws {{ payload: Error }} */
  export function transact(ops: Op[]): Revision[];
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
