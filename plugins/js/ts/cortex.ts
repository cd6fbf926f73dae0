// Idiomatic helpers for Cortex agents in TypeScript: native values in, native values
// out. The raw bindings (cortex-agent.d.ts) speak JSON text, bigint revisions and
// thrown `{ payload }` variants; this module hides them.
//
//   import { Collection, agent, log } from './cortex.js';
//   const counters = new Collection<number>('counters');
//   export const handle = agent((input) => String(counters.update('hits', (n) => (n ?? 0) + 1)));

import * as documents from 'cortex:agent/documents@0.1.0';
import * as runtime from 'cortex:agent/runtime@0.1.0';

export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };

/** Throw from an agent to return an `agent-error` with a stable `code`. */
export class AgentError extends Error {
  readonly payload: { code: string; message: string };
  constructor(readonly code: string, message = '') {
    super(`${code}: ${message}`);
    this.payload = { code, message };
  }
}

/** A documents call failed; `kind` is the WIT variant case (`invalid-key`, ...). */
export class DocumentError extends Error {
  constructor(readonly kind: string, readonly detail: string | bigint) {
    super(`${kind}: ${detail}`);
  }
}

/** Compare-and-swap failed; `current` is the revision now (0n: absent). */
export class Conflict extends DocumentError {
  constructor(readonly current: bigint) {
    super('conflict', current);
  }
}

function call<T>(f: () => T): T {
  try {
    return f();
  } catch (e) {
    const p = (e as { payload?: documents.Error }).payload;
    if (p === undefined || typeof p !== 'object' || !('tag' in p)) throw e;
    if (p.tag === 'conflict') throw new Conflict(p.val);
    throw new DocumentError(p.tag, p.val);
  }
}

/** A collection of JSON documents of the agent's tenant, as native values. */
export class Collection<T extends Json = Json> {
  constructor(readonly name: string) {}

  /** The value at `key`, or `undefined` when absent. */
  get(key: string): T | undefined {
    return this.getWithRevision(key)[0];
  }

  /** `[value, revision]`; `[undefined, 0n]` when absent. */
  getWithRevision(key: string): [T | undefined, bigint] {
    const doc = call(() => documents.get(this.name, key));
    return doc === undefined ? [undefined, 0n] : [JSON.parse(doc.value) as T, doc.revision];
  }

  /** Store `value`; with `expected`, only if the revision matches (0n: only if absent),
   *  else throws `Conflict`. Returns the new revision. */
  put(key: string, value: T, expected?: bigint): bigint {
    return call(() => documents.put(this.name, key, JSON.stringify(value), expected));
  }

  /** Delete `key`; returns whether it existed. */
  delete(key: string, expected?: bigint): boolean {
    return call(() => documents.delete(this.name, key, expected));
  }

  /** Read-modify-write with compare-and-swap, retried on conflict. Returns the new value. */
  update(key: string, fn: (old: T | undefined) => T, retries = 100): T {
    for (let i = 0; i < retries; i++) {
      const [old, revision] = this.getWithRevision(key);
      const next = fn(old);
      try {
        this.put(key, next, revision);
        return next;
      } catch (e) {
        if (e instanceof Conflict) continue;
        throw e;
      }
    }
    throw new DocumentError('conflict', `${key}: gave up after ${retries} attempts`);
  }

  /** Every key starting with `prefix`, in order. */
  *keys(prefix = '', page = 100): Generator<string> {
    let cursor: string | undefined;
    do {
      const p = call(() => documents.list(this.name, prefix, page, cursor));
      for (const d of p.documents) yield d.key;
      cursor = p.next;
    } while (cursor !== undefined);
  }
}

type Fields = Record<string, unknown>;
const emit = (level: runtime.Level, message: string, fields: Fields = {}) =>
  runtime.log(level, message, Object.entries(fields).map(([k, v]) => [k, String(v)]));

/** Structured records in the agent's log: `log.info('msg', { key: 'value' })`. */
export const log = {
  trace: (m: string, f?: Fields) => emit('trace', m, f),
  debug: (m: string, f?: Fields) => emit('debug', m, f),
  info: (m: string, f?: Fields) => emit('info', m, f),
  warn: (m: string, f?: Fields) => emit('warn', m, f),
  error: (m: string, f?: Fields) => emit('error', m, f),
};

export const whoami = (): runtime.Identity => runtime.whoami();
export const config = (key: string): string | undefined => runtime.config(key);

/** What a handler may return: text, bytes, any JSON value (sent as JSON), or nothing. */
export type Reply = string | Uint8Array | Json | undefined;

/** Wrap `run` as the `handle` export: input bytes, reply converted, errors mapped to
 *  `agent-error` (`AgentError` keeps its code; documents errors use their kind). */
export function agent(run: (input: Uint8Array) => Reply): (input: Uint8Array) => Uint8Array | undefined {
  return (input) => {
    let out: Reply;
    try {
      out = run(input);
    } catch (e) {
      if (e instanceof AgentError) throw e;
      if (e instanceof DocumentError) throw new AgentError(e.kind, e.message);
      throw new AgentError('internal', e instanceof Error ? `${e.name}: ${e.message}` : String(e));
    }
    if (out === undefined) return undefined;
    if (out instanceof Uint8Array) return out;
    return new TextEncoder().encode(typeof out === 'string' ? out : JSON.stringify(out));
  };
}

/** The input as UTF-8 text. */
export const text = (input: Uint8Array): string => new TextDecoder().decode(input);
