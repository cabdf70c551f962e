"""Fail fast when the Hugging Face Hub cannot be reached, instead of huggingface_hub's retries.

    guard_hub_requests()        # once, before huggingface_hub sends anything (checkpoint._download does)
    snapshot_download(...)      # offline: HubUnreachable at the first request, no "Retrying in 8s"

Offline, huggingface_hub retries each request 5 times with backoff (1+2+4+8+8 s): a Hub id took
24-33 s to fail. guard_hub_requests gives huggingface_hub's shared HTTP client one more request
hook: before a request to a host, that host (or the proxy the environment names for it) must
accept a TCP connection within PROBE_TIMEOUT_S. The answer is remembered for REMEMBER_S, so a
process probes each host once, not once per request. A host that did not answer raises
HubUnreachable, a subclass of huggingface_hub's OfflineModeIsEnabled: huggingface_hub does not
retry it, and treats it as it treats HF_HUB_OFFLINE=1 (snapshot_download falls back to the cache).
HF_HUB_OFFLINE=1 still stops every request before this hook, without a probe. The check sits in
the HTTP layer rather than before each call in checkpoint._download, so only a request that is
really sent costs a probe, and every huggingface_hub call made after the guard gets it.
"""
from __future__ import annotations

import queue
import socket
import threading
import time
import urllib.parse
import urllib.request

from huggingface_hub.errors import OfflineModeIsEnabled

PROBE_TIMEOUT_S = 1.5  # DNS + TCP connect; a Hub that answers at all does so in well under this
REMEMBER_S = 30.0  # how long an answer holds: a server that comes back online is noticed within this

_SEEN: dict[tuple[str, int], tuple[str | None, float]] = {}  # (host, port) → (why not, time.monotonic())
_LOCK = threading.Lock()  # held while probing, so concurrent requests wait for one probe
_INSTALLED = False


class HubUnreachable(OfflineModeIsEnabled):
    """A Hub host did not answer the probe: not an error huggingface_hub retries."""


def guard_hub_requests() -> None:
    """Make huggingface_hub's shared client probe a host before its first request (idempotent)."""
    global _INSTALLED
    if not _INSTALLED:
        from huggingface_hub import set_client_factory

        set_client_factory(_guarded_client)
        _INSTALLED = True


def unreachable(host: str, port: int) -> str | None:
    """Why host:port did not accept a TCP connection within PROBE_TIMEOUT_S (None: it did); asked once per REMEMBER_S.

    Example:
        >>> unreachable("huggingface.co", 443)           # on a machine without DNS
        '[Errno -2] Name or service not known'
    """
    with _LOCK:
        known = _SEEN.get((host, port))
        if known is None or time.monotonic() - known[1] > REMEMBER_S:
            known = _SEEN[(host, port)] = (_probe(host, port), time.monotonic())
        return known[0]


def refuse_unreachable(request) -> None:
    """The request hook: HubUnreachable when the request's first hop did not answer."""
    host, port = first_hop(request.url.scheme, request.url.host, request.url.port)
    reason = unreachable(host, port)
    if reason is not None:
        raise HubUnreachable(f"the Hugging Face Hub cannot be reached ({host}:{port}: {reason})")


def first_hop(scheme: str, host: str, port: int | None) -> tuple[str, int]:
    """Where a request connects first: the proxy the environment names (HTTPS_PROXY, ALL_PROXY…), else the host.

    Example:
        >>> first_hop("https", "huggingface.co", None)     # no proxy set
        ('huggingface.co', 443)
    """
    proxies = urllib.request.getproxies()
    proxy = proxies.get(scheme) or proxies.get("all")
    if proxy and not urllib.request.proxy_bypass(host):
        parts = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        if parts.hostname:
            return parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)
    return host, port or (443 if scheme == "https" else 80)


def _probe(host: str, port: int) -> str | None:
    """One TCP connect, in a thread so that a resolver that hangs cannot hold the caller past the timeout."""
    outcome: queue.SimpleQueue[str | None] = queue.SimpleQueue()

    def connect() -> None:
        try:
            socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S).close()
            outcome.put(None)
        except OSError as error:  # no DNS, refused, unreachable network, timed out
            outcome.put(str(error) or type(error).__name__)

    threading.Thread(target=connect, name="hub-probe", daemon=True).start()
    try:
        return outcome.get(timeout=PROBE_TIMEOUT_S)
    except queue.Empty:
        return f"no answer within {PROBE_TIMEOUT_S:g} s"


def _guarded_client():
    """huggingface_hub's own client (its offline hook and request ids), with refuse_unreachable after its hooks."""
    from huggingface_hub.utils._http import default_client_factory  # not exported; set_client_factory replaces it

    client = default_client_factory()
    hooks = client.event_hooks
    client.event_hooks = {**hooks, "request": [*hooks.get("request", []), refuse_unreachable]}
    return client
