"""Keeping browsers out of the API: Origin, Host and Content-Type rules.

The API has no authentication; being reachable only from the pod is its
access control. A browser on the same machine (or in a pod with a browser
agent) can still be made to send requests to ``127.0.0.1:8741``: a cross-site
form or ``fetch`` posting ``text/plain`` needs no CORS preflight, and DNS
rebinding lets a foreign page read answers under its own host name. So, on
every API listener (the Unix socket too, which a local proxy may forward to):

- a request carrying ``Origin`` is refused: browsers send it on cross-site
  requests and on every ``fetch`` with a body; agents' HTTP clients never do;
- ``Host`` must name loopback (``localhost``, ``127.0.0.0/8``, ``[::1]``,
  any port) or be absent: a rebinding page's requests carry its own name;
- a request with a body must say ``Content-Type: application/json``, which a
  browser cannot send cross-site without a preflight this API never answers.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
JSON = "application/json"


def host_is_loopback(host: str) -> bool:
    """Whether a ``Host`` header value names this machine's loopback interface."""
    value = host.strip().lower()
    if value.startswith("["):  # [::1] or [::1]:8741
        name, sep, rest = value[1:].partition("]")
        if not sep or (rest and not _is_port(rest)):
            return False
    else:
        name, _, port = value.partition(":")
        if port and not port.isdigit():
            return False
    if name.rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _is_port(rest: str) -> bool:
    return rest.startswith(":") and rest[1:].isdigit()


def refusal(request: web.Request) -> tuple[int, str] | None:
    """(status, detail) when *request* breaks a rule, else None."""
    origin = request.headers.get("Origin")
    if origin is not None:
        return 403, (f"requests carrying an Origin header are refused (got Origin: {origin!r}); "
                     "rule: this API serves local agents, and only browsers send Origin")
    host = request.headers.get("Host")
    if host is not None and not host_is_loopback(host):
        return 403, (f"Host {host!r} is not this machine's loopback; rule: Host must be "
                     "localhost, 127.0.0.1 or [::1] (any port), as local clients send it")
    has_body = request.body_exists or "Content-Type" in request.headers
    if request.method in BODY_METHODS and has_body and request.content_type != JSON:
        got = request.headers.get("Content-Type")
        return 415, (f"Content-Type {got!r} is refused for a request body; rule: bodies "
                     f"are JSON sent as Content-Type: {JSON}")
    return None


@web.middleware
async def guard(request: web.Request,
                handler: Callable[[web.Request], Awaitable[Any]]) -> Any:
    """Answer a request that breaks a rule with ``{"detail": ...}``; pass the rest."""
    refused = refusal(request)
    if refused is not None:
        status, detail = refused
        return web.json_response({"detail": detail, "type": "RequestRefused"}, status=status)
    return await handler(request)
