// A counter agent in plain JavaScript, on the raw WIT bindings (componentize-js).
// Input: a key (empty: "default"). It increments the JSON number stored under that key
// in collection "counters" with compare-and-swap and returns the new value as text.
// Input "probe-wasi" tries a file and a socket and reports how each was denied.
import { get, put } from 'cortex:agent/documents@0.1.0';
import { log } from 'cortex:agent/runtime@0.1.0';

const COLLECTION = 'counters';

// WIT `result<T, E>` imports throw on `err`; the WIT error variant is on `.payload`
// (`{ tag: 'conflict', val: 3n }`). u64 revisions are BigInts.
function increment(key) {
  for (let attempt = 0; attempt < 100; attempt++) {
    const doc = get(COLLECTION, key); // undefined when absent
    const current = doc ? JSON.parse(doc.value) : 0;
    const revision = doc ? doc.revision : 0n;
    const next = current + 1;
    try {
      put(COLLECTION, key, JSON.stringify(next), revision);
      return next;
    } catch (e) {
      if (e.payload && e.payload.tag === 'conflict') continue;
      throw e;
    }
  }
  throw agentError('conflict', `${key}: gave up after 100 attempts`);
}

// An `agent-error` for the `err` side of `handle`'s result.
function agentError(code, message) {
  const e = new Error(`${code}: ${message}`);
  e.payload = { code, message };
  return e;
}

function probeWasi() {
  // StarlingMonkey (the engine under componentize-js) has no filesystem or socket API:
  // there is no `fs` and no `net`, so neither can even be attempted. The only way out
  // would be `fetch`, i.e. wasi:http, which this build leaves out (`-d http fetch-event`)
  // and the host refuses at load.
  const g = globalThis;
  return [
    `file: unreachable (no fs API; require is ${typeof g.require})`,
    `socket: unreachable (no net API; WebSocket is ${typeof g.WebSocket})`,
  ].join('; ');
}

export function handle(input) {
  const key = new TextDecoder().decode(input) || 'default';
  if (key.startsWith('probe-wasi')) return new TextEncoder().encode(probeWasi());
  try {
    const value = increment(key);
    log('info', 'counted', [['key', key], ['value', String(value)]]);
    return new TextEncoder().encode(String(value));
  } catch (e) {
    if (e.payload && typeof e.payload.code === 'string') throw e;
    const tag = e.payload && e.payload.tag ? e.payload.tag : 'internal';
    throw agentError(tag, String(e.payload ? JSON.stringify(e.payload, (_, v) => (typeof v === 'bigint' ? Number(v) : v)) : e));
  }
}
