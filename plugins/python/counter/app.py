"""A counter agent: input is a key (empty: "default"); it increments the JSON number
stored under that key in collection "counters" with compare-and-swap and returns the
new value as decimal text. Input "probe-wasi" tries a file and a socket and reports
how each was denied (or that the socket module is absent)."""

from cortex import Agent, Collection, log

counters = Collection("counters")


def probe_wasi() -> str:
    results = []
    try:
        with open("/etc/passwd") as f:
            results.append("file: allowed " + f.read(20))
    except OSError as e:
        results.append(f"file: denied ({type(e).__name__}: {e})")
    try:
        import socket
    except ImportError:
        # componentize-py's CPython is built without the socket module: a Python agent
        # cannot even try (the component imports wasi:sockets, which the host denies).
        results.append("socket: unreachable (no socket module in componentize-py's CPython)")
    else:
        try:
            socket.create_connection(("127.0.0.1", 80), timeout=2).close()
            results.append("socket: allowed")
        except OSError as e:
            results.append(f"socket: denied ({type(e).__name__}: {e})")
    return "; ".join(results)


class WitWorld(Agent):
    def run(self, data: bytes):
        key = data.decode() or "default"
        if key.startswith("probe-wasi"):
            return probe_wasi()
        value = counters.update(key, lambda n: (n or 0) + 1)
        log.info("counted", key=key, value=value)
        return str(value)
