"""Idiomatic helpers for Cortex agents written in Python.

The generated bindings (``wit_world``, made by componentize-py from ``wit/``) speak in
raw WIT terms: JSON text, revisions, ``Err`` exceptions carrying variant classes. This
module wraps them so that an agent works with native values:

    from cortex import Agent, AgentError, Collection, log

    counters = Collection("counters")

    class WitWorld(Agent):
        def run(self, data: bytes):
            return str(counters.update("hits", lambda n: (n or 0) + 1))

``Agent.handle`` is the export the host calls: it turns a returned ``str``/``bytes``/
``None`` into the WIT result and any exception into an ``agent-error``.
"""

import json
from typing import Any, Callable, Optional, Tuple

from componentize_py_types import Err
from wit_world.imports import documents as _docs
from wit_world.imports import runtime as _rt
from wit_world.imports import types as _types

__all__ = ["Agent", "AgentError", "Collection", "Conflict", "DocumentError", "log", "whoami", "config"]


class AgentError(Exception):
    """Raise from ``Agent.run`` to return an ``agent-error`` with a stable ``code``."""

    def __init__(self, code: str, message: str = ""):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class DocumentError(Exception):
    """A documents call failed: ``kind`` is the WIT variant case (``invalid-key``, ...)."""

    def __init__(self, kind: str, detail: Any):
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail


class Conflict(DocumentError):
    """Compare-and-swap failed; ``current`` is the document's revision now (0: absent)."""

    def __init__(self, current: int):
        super().__init__("conflict", current)
        self.current = current


_KINDS = {
    _docs.Error_InvalidKey: "invalid-key",
    _docs.Error_TooLarge: "too-large",
    _docs.Error_InvalidValue: "invalid-value",
    _docs.Error_QuotaExceeded: "quota-exceeded",
    _docs.Error_Unavailable: "unavailable",
}


def _call(fn, *args):
    try:
        return fn(*args)
    except Err as e:
        v = e.value
        if isinstance(v, _docs.Error_Conflict):
            raise Conflict(v.value) from None
        raise DocumentError(_KINDS.get(type(v), type(v).__name__), v.value) from None


class Collection:
    """A collection of JSON documents of the agent's tenant, as native Python values."""

    def __init__(self, name: str):
        self.name = name

    def get(self, key: str, default: Any = None) -> Any:
        """The value at ``key`` decoded from JSON, or ``default`` when absent."""
        value, revision = self.get_with_revision(key)
        return default if revision == 0 else value

    def get_with_revision(self, key: str) -> Tuple[Any, int]:
        """``(value, revision)``; ``(None, 0)`` when absent."""
        doc: Optional[_docs.Document] = _call(_docs.get, self.name, key)
        if doc is None:
            return None, 0
        return json.loads(doc.value), doc.revision

    def put(self, key: str, value: Any, expected: Optional[int] = None) -> int:
        """Store ``value`` as JSON; with ``expected`` only if the revision matches
        (0: only if absent), else raises ``Conflict``. Returns the new revision."""
        return _call(_docs.put, self.name, key, json.dumps(value, separators=(",", ":")), expected)

    def delete(self, key: str, expected: Optional[int] = None) -> bool:
        """Delete ``key``; returns whether it existed."""
        return _call(_docs.delete, self.name, key, expected)

    def update(self, key: str, fn: Callable[[Any], Any], retries: int = 100) -> Any:
        """Read-modify-write with compare-and-swap: ``fn(old)`` (``None`` when absent)
        gives the new value; on a conflict, read again and retry. Returns the new value."""
        for _ in range(retries):
            old, revision = self.get_with_revision(key)
            new = fn(old)
            try:
                self.put(key, new, revision)
                return new
            except Conflict:
                continue
        raise DocumentError("conflict", f"{key}: gave up after {retries} attempts")

    def keys(self, prefix: str = "", page: int = 100):
        """Every key starting with ``prefix``, in order."""
        cursor = None
        while True:
            p = _call(_docs.list, self.name, prefix, page, cursor)
            for d in p.documents:
                yield d.key
            if p.next is None:
                return
            cursor = p.next


class _Log:
    """``log.info("msg", key=value, ...)``: structured records in the agent's log."""

    def _emit(self, level, message: str, fields: dict):
        _rt.log(level, message, [(str(k), str(v)) for k, v in fields.items()])

    def trace(self, message: str, **fields): self._emit(_rt.Level.TRACE, message, fields)
    def debug(self, message: str, **fields): self._emit(_rt.Level.DEBUG, message, fields)
    def info(self, message: str, **fields): self._emit(_rt.Level.INFO, message, fields)
    def warn(self, message: str, **fields): self._emit(_rt.Level.WARN, message, fields)
    def error(self, message: str, **fields): self._emit(_rt.Level.ERROR, message, fields)


log = _Log()


def whoami() -> _rt.Identity:
    """tenant, agent and invocation id of the running invocation."""
    return _rt.whoami()


def config(key: str, default: Optional[str] = None) -> Optional[str]:
    """One value of the agent's configuration."""
    v = _rt.config(key)
    return default if v is None else v


class Agent:
    """Base class of the exported world: subclass it as ``WitWorld`` and define ``run``."""

    def run(self, data: bytes) -> Any:
        raise AgentError("not-implemented", "define run(self, data) in your WitWorld class")

    def handle(self, input: bytes) -> Optional[bytes]:
        try:
            out = self.run(bytes(input))
        except AgentError as e:
            raise Err(_types.AgentError(code=e.code, message=e.message))
        except DocumentError as e:
            raise Err(_types.AgentError(code=e.kind, message=str(e)))
        except Exception as e:  # anything else is a bug in the agent: report, don't trap
            raise Err(_types.AgentError(code="internal", message=f"{type(e).__name__}: {e}"))
        if out is None:
            return None
        if isinstance(out, str):
            return out.encode()
        if isinstance(out, (bytes, bytearray)):
            return bytes(out)
        return json.dumps(out).encode()
