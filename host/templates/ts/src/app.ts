// A notes agent: every part of the Cortex agent world in one small program.
//
// - `init` reads the configuration (`greeting`) and records it in `settings/<agent>`.
// - `handle` takes a JSON command: `hello`, `put` (compare-and-swap), `get`, `link`
//   (a graph relation), `send` (a message to another agent), `publish` (a message to
//   the agents subscribed to a topic) and `receive` (what a message delivers).
// - `onChange` (the `on-change` export) sees the writes to the watched collection
//   `notes` and records each one in `changes/<key>`.
//
// The imports are declared in cortex-agent.d.ts. An import that returns `result` throws
// on `err`, the WIT error on the exception's `.payload`; an export returns
// `err(agent-error)` when it throws an object whose `.payload` is `{ code, message }`.
import * as documents from 'cortex:agent/documents@0.1.0';
import * as graph from 'cortex:agent/graph@0.1.0';
import * as messaging from 'cortex:agent/messaging@0.1.0';
import * as runtime from 'cortex:agent/runtime@0.1.0';
import type { ChangeEvent } from 'cortex:agent/types@0.1.0';

type Json = null | boolean | number | string | Json[] | { [key: string]: Json };
type Command = { [key: string]: Json };

class AgentError extends Error {
  readonly payload: { code: string; message: string };
  constructor(code: string, message: string) {
    super(`${code}: ${message}`);
    this.payload = { code, message };
  }
}

// Any failure as an agent-error: our own, an import's WIT error (its case as the code),
// or a bug (code `internal`).
function guard<T>(fn: () => T): T {
  try {
    return fn();
  } catch (e) {
    if (e instanceof AgentError) throw e;
    const p = (e as { payload?: { tag?: unknown; val?: unknown } }).payload;
    if (p && typeof p.tag === 'string') throw new AgentError(p.tag, String(p.val ?? ''));
    throw new AgentError('internal', String(e));
  }
}

function field(cmd: Command, name: string): string {
  const value = cmd[name];
  if (typeof value !== 'string') throw new AgentError('bad-input', `missing string field "${name}"`);
  return value;
}

const store = (collection: string, key: string, value: Json) =>
  documents.put(collection, key, JSON.stringify(value), undefined);
const encode = (value: Json) => new TextEncoder().encode(JSON.stringify(value));

export function init(config: [string, string][]): void {
  guard(() => {
    const entry = config.find(([k]) => k === 'greeting');
    const greeting = entry ? entry[1] : 'Hello';
    if (!greeting) throw new AgentError('bad-config', 'greeting must not be empty');
    store('settings', runtime.whoami().agent, { greeting });
    runtime.log('info', `configured: greeting "${greeting}"`, []);
  });
}

export function handle(input: Uint8Array): Uint8Array | undefined {
  return guard(() => {
    let cmd: Command;
    try {
      cmd = JSON.parse(new TextDecoder().decode(input)) as Command;
    } catch (e) {
      throw new AgentError('invalid-json', String(e));
    }
    const me = runtime.whoami().agent;
    switch (cmd.op) {
      case 'hello':
        return encode({ message: `${runtime.config('greeting') ?? 'Hello'}, ${field(cmd, 'name')}!` });
      case 'put': {
        const key = field(cmd, 'key');
        // Compare-and-swap: the write succeeds only if nobody wrote since our read.
        const current = documents.get('notes', key)?.revision ?? 0n;
        const revision = documents.put('notes', key, JSON.stringify({ text: field(cmd, 'text') }), current);
        return encode({ key, revision: Number(revision) });
      }
      case 'get': {
        const collection = typeof cmd.collection === 'string' ? cmd.collection : 'notes';
        const doc = documents.get(collection, field(cmd, 'key'));
        return encode(doc ? { value: JSON.parse(doc.value) as Json, revision: Number(doc.revision) } : { value: null, revision: 0 });
      }
      case 'link': {
        graph.link(me, field(cmd, 'to'), 'knows', '{}');
        const edges = graph.neighbours(me, 'knows', 'outgoing', 100);
        return encode({ neighbours: edges.map((e) => e.to) });
      }
      case 'send': {
        const to = field(cmd, 'to');
        messaging.send(to, encode({ op: 'receive', from: me, text: field(cmd, 'text') }), undefined);
        return encode({ sent: to });
      }
      case 'publish': {
        const topic = field(cmd, 'topic');
        messaging.publish(topic, encode({ op: 'receive', from: me, text: field(cmd, 'text') }));
        return encode({ published: topic });
      }
      case 'receive':
        // A message from another agent: delivered at least once, so the write is idempotent.
        store('inbox', field(cmd, 'from'), { text: field(cmd, 'text') });
        return undefined;
      default:
        throw new AgentError('bad-input', `unknown op ${JSON.stringify(cmd.op)}`);
    }
  });
}

export function onChange(events: ChangeEvent[]): void {
  guard(() => {
    for (const e of events.filter((e) => e.collection === 'notes')) {
      store('changes', e.key, { op: e.op, revision: Number(e.revision), seq: Number(e.seq) });
    }
  });
}
