"""Hosted mode: cap how many heavy jobs one visitor may have queued or running at once.

    limit_visitor_jobs(app, lane="gpu", limit=2, proxies=SPACE_PROXIES)   # after app.queue(), before launch

Merges, comparisons, sweeps and weights-from-data share one lane that runs a single job at a
time for everybody. The queue's max_size caps all visitors together, so without a per-visitor
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
The count reads gradio 6's event table (`_queue.event_ids_to_events`: every queued or running
event, dropped by gradio when one ends, fails or is cancelled), so no slot can leak;
tests/reliability/test_hostile_load.py fails if a gradio upgrade moves it.
"""
from __future__ import annotations

import asyncio
import ipaddress

import gradio as gr

# Private and shared ranges: where a Space's proxies live. Never a visitor's public address.
SPACE_PROXIES = ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "127.0.0.0/8", "::1/128",
                 "fc00::/7")


def limit_visitor_jobs(app: gr.Blocks, *, lane: str, limit: int, proxies: tuple[str, ...] = ()) -> None:
    """Make the queue refuse a visitor's job number limit + 1 in `lane` (HTTP 400, one line), atomically.

    proxies: networks whose X-Forwarded-For entries are trusted (see the module docstring).
    """
    queue, trusted = app._queue, [ipaddress.ip_network(p) for p in proxies]
    join, lock = queue.push, asyncio.Lock()

    async def admitting_push(body, request, username):
        fn = app.fns.get(body.fn_index) if isinstance(body.fn_index, int) else None
        if fn is None or fn.concurrency_id != lane:
            return await join(body, request, username)
        async with lock:  # count and add as one step: simultaneous joins cannot all see room
            if visitor_jobs(app, visitor_key(request, username, trusted), lane, trusted) >= limit:
                return (False, f"you already have {limit} jobs queued or running (counted per account, or per "
                        "address when not signed in): wait for one to finish, or stop it, before starting another",
                        "error")
            return await join(body, request, username)

    queue.push = admitting_push


def visitor_jobs(app: gr.Blocks, key: str, lane: str, trusted: list = ()) -> int:
    """How many events of `lane` belonging to visitor `key` are queued or running now."""
    events = list(app._queue.event_ids_to_events.values())
    return sum(1 for event in events
               if event.fn.concurrency_id == lane and visitor_key(event.request, event.username, trusted) == key)


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
