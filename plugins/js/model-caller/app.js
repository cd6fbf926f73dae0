// A model-calling agent in plain JavaScript (componentize-js): the JavaScript twin of
// plugins/model-caller. Its input is a prompt; it POSTs an OpenAI-compatible chat
// completion to `<base_url>/chat/completions` with `fetch` (StarlingMonkey's fetch, over
// wasi:http/outgoing-handler) and answers `choices[0].message.content`.
//
// It holds no API key and sends none: the deployment's egress grant names the tenant's
// secret, and the host puts it in the `authorization` header on the way out (see
// cortex.toml beside this file).
//
// Config: `base_url` (default `https://api.openai.com/v1`), `model` (default
// `gpt-4o-mini`). Errors: `http-error` when the request fails (no grant allows it, the
// address is refused, a timeout...), `http-status` for a non-2xx answer (its body in the
// message), `bad-reply` for an answer without a message.
import { config, log } from 'cortex:agent/runtime@0.1.0';

// An `agent-error` for the `err` side of `handle`'s result.
function agentError(code, message) {
  const e = new Error(`${code}: ${message}`);
  e.payload = { code, message };
  return e;
}

// componentize-js runs the event loop until the promise an export returns settles, so
// the export may be async while the component function stays synchronous.
export async function handle(input) {
  const prompt = new TextDecoder().decode(input);
  const base = (config('base_url') ?? 'https://api.openai.com/v1').replace(/\/+$/, '');
  const model = config('model') ?? 'gpt-4o-mini';
  const body = JSON.stringify({ model, messages: [{ role: 'user', content: prompt }] });
  let response;
  try {
    response = await fetch(`${base}/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body,
    });
  } catch (e) {
    throw agentError('http-error', String(e && e.message ? e.message : e));
  }
  const text = await response.text();
  if (!response.ok) throw agentError('http-status', `${response.status}: ${text}`);
  let content;
  try {
    content = JSON.parse(text).choices[0].message.content;
  } catch (e) {
    content = undefined;
  }
  if (typeof content !== 'string') throw agentError('bad-reply', 'the answer has no choices[0].message.content');
  log('info', 'model answered', [['model', model], ['chars', String(content.length)]]);
  return new TextEncoder().encode(content);
}
