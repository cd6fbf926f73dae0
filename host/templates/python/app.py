"""A notes agent: every part of the Cortex agent world in one small program.

- ``configure`` (the ``init`` export) reads the configuration (``greeting``) and records
  it in ``settings/<agent>``.
- ``run`` (``handle``) takes a JSON command: ``hello``, ``put`` (compare-and-swap),
  ``get``, ``link`` (a graph relation), ``send`` (a message to another agent),
  ``publish`` (a message to the agents subscribed to a topic) and ``receive`` (what a
  message delivers).
- ``changed`` (``on-change``) sees the writes to the watched collection ``notes`` and
  records each one in ``changes/<key>``.
"""

import json

from cortex import Agent, AgentError, ChangeOp, Collection, config, graph, log, messaging, whoami


def field(cmd: dict, name: str) -> str:
    value = cmd.get(name)
    if not isinstance(value, str):
        raise AgentError("bad-input", f"missing string field {name!r}")
    return value


class WitWorld(Agent):
    def configure(self, settings: dict):
        greeting = settings.get("greeting", "Hello")
        if not greeting:
            raise AgentError("bad-config", "greeting must not be empty")
        Collection("settings").put(whoami().agent, {"greeting": greeting})
        log.info(f"configured: greeting {greeting!r}")

    def run(self, data: bytes):
        try:
            cmd = json.loads(data)
        except ValueError as e:
            raise AgentError("invalid-json", str(e))
        me = whoami().agent
        op = cmd.get("op")
        if op == "hello":
            return {"message": f"{config('greeting', 'Hello')}, {field(cmd, 'name')}!"}
        if op == "put":
            key, notes = field(cmd, "key"), Collection("notes")
            # Compare-and-swap: the write succeeds only if nobody wrote since our read.
            _, current = notes.get_with_revision(key)
            revision = notes.put(key, {"text": field(cmd, "text")}, expected=current)
            return {"key": key, "revision": revision}
        if op == "get":
            value, revision = Collection(cmd.get("collection", "notes")).get_with_revision(field(cmd, "key"))
            return {"value": value, "revision": revision}
        if op == "link":
            graph.link(me, field(cmd, "to"), "knows")
            return {"neighbours": [e.to for e in graph.neighbours(me, "knows")]}
        if op == "send":
            to = field(cmd, "to")
            messaging.send(to, {"op": "receive", "from": me, "text": field(cmd, "text")})
            return {"sent": to}
        if op == "publish":
            topic = field(cmd, "topic")
            messaging.publish(topic, {"op": "receive", "from": me, "text": field(cmd, "text")})
            return {"published": topic}
        if op == "receive":
            # A message from another agent: delivered at least once, so the write is idempotent.
            Collection("inbox").put(field(cmd, "from"), {"text": field(cmd, "text")})
            return None
        raise AgentError("bad-input", f"unknown op {op!r}")

    def changed(self, events):
        changes = Collection("changes")
        for e in events:
            if e.collection == "notes":
                op = "put" if e.op == ChangeOp.PUT else "delete"
                changes.put(e.key, {"op": op, "revision": e.revision, "seq": e.seq})
