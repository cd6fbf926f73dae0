"""Helpers for Cortex agents in Python: native values over the generated bindings.

componentize-py generates ``wit_world`` from ``wit/`` at build time; its functions speak
raw WIT (JSON text, revisions, ``Err`` exceptions carrying variant classes). This module
wraps them:

- ``Agent``: the base class of your ``WitWorld``. Define ``run(self, data)`` (the
  ``handle`` export), and optionally ``configure(self, config)`` (``init``, with the
  configuration as a dict) and ``changed(self, events)`` (``on-change``). Raise
  ``AgentError(code, message)`` to fail with a stable code; any other exception becomes
  code ``internal`` (or the documents/graph/messaging error's own code), never a trap.
- ``Collection(name)``: JSON documents as Python values, with compare-and-swap.
- ``graph``, ``messaging``: the graph and messaging imports, errors as ``CortexError``.
- ``log``, ``whoami()``, ``config(key)``: the runtime.
"""

import json
from typing import Any, Callable, Dict, List, Optional, Tuple

from componentize_py_types import Err
from wit_world.imports import documents as _docs
from wit_world.imports import graph as _graph
from wit_world.imports import messaging as _msg
from wit_world.imports import runtime as _rt
from wit_world.imports import types as _types

ChangeEvent = _types.ChangeEvent
ChangeOp = _types.ChangeOp
Direction = _graph.Direction

__all__ = [
    "Agent", "AgentError", "ChangeEvent", "ChangeOp", "Collection", "Conflict", "CortexError",
    "Direction", "config", "graph", "log", "messaging", "whoami",
]


class AgentError(Exception):
    """Raise from a hook to return an ``agent-error`` with a stable ``code``."""

    def __init__(self, code: str, message: str = ""):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class CortexError(AgentError):
    """A documents, graph or messaging call failed. ``code`` is the WIT case
    (``invalid-key``, ``unknown-agent``, ...), prefixed with ``graph-`` or ``messaging-``
    for those imports; ``detail`` is the case's value."""

    def __init__(self, code: str, detail: Any):
        super().__init__(code, str(detail))
        self.detail = detail


class Conflict(CortexError):
    """Compare-and-swap failed; ``current`` is the document's revision now (0: absent)."""

    def __init__(self, current: int):
        super().__init__("conflict", f"current revision is {current}")
        self.current = current


def _case(value: Any) -> str:
    """``Error_UnknownAgent`` -> ``unknown-agent``."""
    name = type(value).__name__.removeprefix("Error_")
    return "".join("-" + c.lower() if c.isupper() else c for c in name).lstrip("-")


def _call(prefix: str, fn, *args):
    try:
        return fn(*args)
    except Err as e:
        v = e.value
        if isinstance(v, _docs.Error_Conflict):
            raise Conflict(v.value) from None
        if isinstance(v, _msg.Error_Agent):  # the callee's own error, unchanged
            raise AgentError(v.value.code, v.value.message) from None
        raise CortexError(prefix + _case(v), getattr(v, "value", "")) from None


class Collection:
    """A collection of JSON documents of the agent's tenant, as Python values."""

    def __init__(self, name: str):
        self.name = name

    def get(self, key: str, default: Any = None) -> Any:
        """The value at ``key``, or ``default`` when absent."""
        value, revision = self.get_with_revision(key)
        return default if revision == 0 else value

    def get_with_revision(self, key: str) -> Tuple[Any, int]:
        """``(value, revision)``; ``(None, 0)`` when absent."""
        doc = _call("", _docs.get, self.name, key)
        return (None, 0) if doc is None else (json.loads(doc.value), doc.revision)

    def put(self, key: str, value: Any, expected: Optional[int] = None) -> int:
        """Store ``value`` as JSON. With ``expected``, only if the document is at that
        revision (0: only if absent), else raises ``Conflict``. Returns the new revision."""
        return _call("", _docs.put, self.name, key, json.dumps(value, separators=(",", ":")), expected)

    def delete(self, key: str, expected: Optional[int] = None) -> bool:
        """Delete ``key``; returns whether it existed."""
        return _call("", _docs.delete, self.name, key, expected)

    def update(self, key: str, fn: Callable[[Any], Any], retries: int = 100) -> Any:
        """Read, ``fn(old)`` (``None`` when absent), write back with compare-and-swap;
        read again and retry on a conflict. Returns the new value."""
        for _ in range(retries):
            old, revision = self.get_with_revision(key)
            new = fn(old)
            try:
                self.put(key, new, revision)
                return new
            except Conflict:
                continue
        raise CortexError("conflict", f"{key}: gave up after {retries} attempts")

    def keys(self, prefix: str = "", page: int = 100):
        """Every key starting with ``prefix``, in order."""
        cursor = None
        while True:
            p = _call("", _docs.list, self.name, prefix, page, cursor)
            yield from (d.key for d in p.documents)
            if p.next is None:
                return
            cursor = p.next


class _Graph:
    """Relations between the agents of the tenant."""

    def link(self, from_: str, to: str, kind: str, attributes: Any = None) -> None:
        """Create or replace the edge ``from_ -kind-> to`` (attributes: a JSON value)."""
        _call("graph-", _graph.link, from_, to, kind, json.dumps(attributes or {}))

    def unlink(self, from_: str, to: str, kind: str) -> bool:
        """Remove the edge; returns whether it existed."""
        return _call("graph-", _graph.unlink, from_, to, kind)

    def neighbours(self, agent: str, kind: Optional[str] = None,
                   direction: Direction = Direction.OUTGOING, limit: int = 100) -> List[_graph.Edge]:
        """Edges of ``agent`` (``.from_``, ``.to``, ``.kind``, ``.attributes``)."""
        return _call("graph-", _graph.neighbours, agent, kind, direction, limit)

    def traverse(self, start: str, kind: Optional[str] = None, direction: Direction = Direction.OUTGOING,
                 max_depth: int = 2, limit: int = 100) -> List[str]:
        """Agents reachable from ``start``, breadth first."""
        return _call("graph-", _graph.traverse, start, kind, direction, max_depth, limit)


class _Messaging:
    """Messages to the agents of the tenant; a ``dict`` or ``list`` body is sent as JSON."""

    @staticmethod
    def _bytes(body: Any) -> bytes:
        if isinstance(body, (bytes, bytearray)):
            return bytes(body)
        return body.encode() if isinstance(body, str) else json.dumps(body).encode()

    def send(self, agent: str, body: Any, idempotency_key: Optional[str] = None) -> None:
        """Queue ``body`` for ``agent``'s ``handle``: durable, delivered at least once."""
        _call("messaging-", _msg.send, agent, self._bytes(body), idempotency_key)

    def call(self, agent: str, body: Any) -> Optional[bytes]:
        """Run ``agent``'s ``handle`` now and return its reply."""
        return _call("messaging-", _msg.call, agent, self._bytes(body))

    def publish(self, topic: str, body: Any) -> None:
        """Send ``body`` to every agent subscribed to ``topic``."""
        _call("messaging-", _msg.publish, topic, self._bytes(body))


graph = _Graph()
messaging = _Messaging()


class _Log:
    """``log.info("msg", key=value, ...)``: structured records in the agent's log."""

    def _emit(self, level, message: str, fields: dict):
        _rt.log(level, message, [(str(k), str(v)) for k, v in fields.items()])

    def debug(self, message: str, **fields): self._emit(_rt.Level.DEBUG, message, fields)
    def info(self, message: str, **fields): self._emit(_rt.Level.INFO, message, fields)
    def warn(self, message: str, **fields): self._emit(_rt.Level.WARN, message, fields)
    def error(self, message: str, **fields): self._emit(_rt.Level.ERROR, message, fields)


log = _Log()


def whoami() -> _rt.Identity:
    """``.tenant``, ``.agent`` and ``.invocation`` of the running invocation."""
    return _rt.whoami()


def config(key: str, default: Optional[str] = None) -> Optional[str]:
    """One value of the agent's configuration."""
    v = _rt.config(key)
    return default if v is None else v


def _guard(fn, *args):
    """Run a hook; every exception becomes ``Err(agent-error)``, never a trap."""
    try:
        return fn(*args)
    except AgentError as e:
        raise Err(_types.AgentError(code=e.code, message=e.message))
    except Exception as e:  # a bug in the agent: reported with code "internal"
        raise Err(_types.AgentError(code="internal", message=f"{type(e).__name__}: {e}"))


class Agent:
    """Base class of your ``WitWorld``: it implements the three exports the host calls
    (``init``, ``handle``, ``on-change``) on top of your ``configure``, ``run`` and
    ``changed``."""

    def configure(self, config: Dict[str, str]) -> None:
        """On deploy and every configuration change. Raise to refuse the configuration."""

    def run(self, data: bytes) -> Any:
        """One invocation. Return ``str``, ``bytes``, a JSON value or ``None``."""
        raise AgentError("not-implemented", "define run(self, data) in your WitWorld class")

    def changed(self, events: List[ChangeEvent]) -> None:
        """A batch of writes to the watched collections. Raise to have it delivered again."""

    def init(self, config: List[Tuple[str, str]]) -> None:
        _guard(self.configure, dict(config))

    def handle(self, input: bytes) -> Optional[bytes]:
        out = _guard(self.run, bytes(input))
        if out is None or isinstance(out, bytes):
            return out
        return out.encode() if isinstance(out, str) else json.dumps(out).encode()

    def on_change(self, events: List[ChangeEvent]) -> None:
        _guard(self.changed, list(events))
