// A counter agent in TypeScript with the helper module: input is a key (empty:
// "default"); the JSON number under that key in collection "counters" is incremented
// with compare-and-swap and the new value returned as text.
import { Collection, agent, log, text } from './cortex.js';

const counters = new Collection<number>('counters');

function probeWasi(): string {
  // The JavaScript engine (StarlingMonkey) has no filesystem or socket API at all, and
  // `fetch` (wasi:http) is left out of the build: neither can even be attempted.
  const g = globalThis as Record<string, unknown>;
  return [
    `file: unreachable (no fs API; require is ${typeof g.require})`,
    `socket: unreachable (no net API; WebSocket is ${typeof g.WebSocket})`,
  ].join('; ');
}

export const handle = agent((input) => {
  const key = text(input) || 'default';
  if (key.startsWith('probe-wasi')) return probeWasi();
  const value = counters.update(key, (n) => (n ?? 0) + 1);
  log.info('counted', { key, value });
  return String(value);
});
