"""Hosted mode: cap how many heavy jobs one visitor may have queued or running at once.

    limit_visitor_jobs(app, lane="gpu", limit=2, apis=("plan",), proxies=SPACE_PROXIES)  # after app.queue()

Merges, comparisons, sweeps and weights-from-data share one lane that runs a single job at a
time for everybody; Check (/plan) runs beside it but may download Hub repos for minutes, so it
counts as heavy too. The queue's max_size caps all visitors together, so without a per-visitor
cap one tab (or a script) could fill the queue and lock everyone else out.

Who a visitor is: their account when signed in (gradio auth or Hugging Face OAuth), else their
address as the server sees it. Not gradio's session hash: the client picks it, and a script
sends a new one with every join. IPv6 addresses count by /64, the block one home is given.

The address: gradio 6.31 starts uvicorn with its defaults, which rewrite request.client from
X-Forwarded-For only when the peer is in FORWARDED_ALLOW_IPS (default 127.0.0.1 and ::1). On a
Space the peer is the Space's own proxy (a private 10.x address), so request.client.host is
that proxy for everybody. visitor_key walks X-Forwarded-For from the right past the trusted
proxies (SPACE_PROXIES on a Space) and takes the first address they did not add; entries a
client wrote itself lie to the left of it and are never reached. TODO: confirm on a live Space
that every hop right of the visitor's is private (log X-Forwarded-For for two visitors on two
networks); a public hop there (a CDN edge) would become the key of everyone behind it.

Admission is atomic: the queue's push (the handler of /queue/join) is wrapped so that, for
the lane's events, counting the visitor's jobs and adding the new one happen under one lock;
a validator cannot do this, as gradio awaits it in a worker thread and adds the event after.
The count is the visitor's heavy events still waiting in gradio 6's event table
(`_queue.event_ids_to_events`) plus their handlers running now. Running handlers are counted by
a wrapper around each heavy handler, not by the table: gradio's /cancel drops an event from the
table at once while a plain function runs on in its worker thread, so join + cancel repeated
would otherwise stack any number of jobs. tests/reliability/test_hostile_load.py and
test_visitor_attacks.py fail if a gradio upgrade moves what this relies on.
"""
from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import ipaddress
import threading
import weakref

import gradio as gr

# Private and shared ranges: where a Space's proxies live. Never a visitor's public address.
SPACE_PROXIES = ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "127.0.0.0/8", "::1/128",
                 "fc00::/7")


def limit_visitor_jobs(app: gr.Blocks, *, lane: str, limit: int, apis: tuple[str, ...] = (),
                       proxies: tuple[str, ...] = ()) -> None:
    """Make the queue refuse a visitor's heavy job number limit + 1 (HTTP 400, one line), atomically.

    Heavy: the events of concurrency lane `lane` and those whose api_name is in `apis`.
    proxies: networks whose X-Forwarded-For entries are trusted (see the module docstring).
    """
    queue, trusted = app._queue, [ipaddress.ip_network(p) for p in proxies]
    heavy = {fn for fn in app.fns.values() if fn.concurrency_id == lane or fn.api_name in apis}
    running = RunningJobs(trusted)
    for fn in heavy:
        fn.fn = running.counted(fn.fn)
    _LIMITED[app] = heavy, running
    join, lock = queue.push, asyncio.Lock()

    async def admitting_push(body, request, username):
        fn = app.fns.get(body.fn_index) if isinstance(body.fn_index, int) else None
        if fn not in heavy:
            return await join(body, request, username)
        async with lock:  # count and add as one step: simultaneous joins cannot all see room
            if visitor_jobs(app, visitor_key(request, username, trusted)) >= limit:
                return (False, f"you already have {limit} jobs queued or running (counted per account, or per "
                        "address when not signed in): wait for one to finish, or stop it, before starting another",
                        "error")
            return await join(body, request, username)

    queue.push = admitting_push


_LIMITED: "weakref.WeakKeyDictionary[gr.Blocks, tuple[set, RunningJobs]]" = weakref.WeakKeyDictionary()


class RunningJobs:
    """The heavy handlers running now, by the request that started them: id(request) -> visitor key."""

    def __init__(self, trusted: list):
        self.trusted = trusted
        self.by_request: dict[int, str] = {}
        self.lock = threading.Lock()  # handlers start and end in gradio's worker threads

    def count(self, key: str) -> int:
        with self.lock:
            return sum(1 for owner in self.by_request.values() if owner == key)

    def __contains__(self, request) -> bool:
        with self.lock:
            return id(request) in self.by_request

    def counted(self, handler):
        """`handler`, counted as running from its call until it returns (or, a generator, until it ends).
        functools.wraps keeps its name, signature and hints, which gradio reads to pass gr.Request."""
        if inspect.isgeneratorfunction(handler):
            @functools.wraps(handler)
            def generator(*args, **kwargs):
                with self._running(args, kwargs):
                    yield from handler(*args, **kwargs)
            return generator

        @functools.wraps(handler)
        def plain(*args, **kwargs):
            with self._running(args, kwargs):
                return handler(*args, **kwargs)
        return plain

    @contextlib.contextmanager
    def _running(self, args, kwargs):
        request = next((a for a in (*args, *kwargs.values()) if isinstance(a, gr.Request)), None)
        inner = getattr(request, "request", None)  # the starlette request gradio's event holds too
        if inner is None:  # called directly (tests, scripts): nothing to count
            yield
            return
        with self.lock:
            self.by_request[id(inner)] = visitor_key(inner, request.username, self.trusted)
        try:
            yield
        finally:
            with self.lock:
                self.by_request.pop(id(inner), None)


def visitor_jobs(app: gr.Blocks, key: str) -> int:
    """How many heavy jobs of visitor `key` are waiting in the queue or running now (app: limited)."""
    heavy, running = _LIMITED[app]
    events = list(app._queue.event_ids_to_events.values())
    waiting = sum(1 for event in events if event.fn in heavy and event.request not in running
                  and visitor_key(event.request, event.username, running.trusted) == key)
    return waiting + running.count(key)


def visitor_key(request, username: str | None, trusted: list) -> str:
    """'user:NAME' when signed in, else 'address:A' (see client_address) for a starlette/fastapi request."""
    scope = getattr(request, "scope", {})
    oauth = (scope.get("session") or {}).get("oauth_info") or {}  # set by gradio's OAuth login on a Space
    user = username or (oauth.get("userinfo") or {}).get("preferred_username")
    if user:
        return f"user:{user}"
    peer = request.client.host if request.client else ""
    forwarded = ",".join(request.headers.getlist("x-forwarded-for"))
    return f"address:{client_address(peer, forwarded, trusted)}"


def client_address(peer: str, forwarded_for: str, trusted: list) -> str:
    """The first hop, from the right of peer and X-Forwarded-For, that is not a trusted proxy; IPv6 as its /64.

    Example:
        >>> client_address("10.16.3.80", "6.6.6.6, 203.0.113.9", [ipaddress.ip_network("10.0.0.0/8")])
        '203.0.113.9'
    """
    hops = [hop.strip() for hop in forwarded_for.split(",") if hop.strip()] + [peer]
    for hop in reversed(hops):
        try:
            address = ipaddress.ip_address(hop)
        except ValueError:
            return hop  # not an address: a proxy would not write it, so it is where trust ends
        if not any(address in network for network in trusted):
            return str(ipaddress.ip_network(f"{address}/64", strict=False)) if address.version == 6 else str(address)
    return peer
