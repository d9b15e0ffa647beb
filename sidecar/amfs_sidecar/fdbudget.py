"""How many client connections fit in the process's descriptor limit.

Every client connection costs one descriptor, and so does every S3 connection,
log file and listener. Without a budget, clients alone reached RLIMIT_NOFILE:
accept() failed, and so did every S3 poll (no descriptor for its socket). The
API's connection limit is therefore the configured one, lowered until what the
sidecar needs besides clients still fits under the soft limit.
"""

from __future__ import annotations

import resource

DEFAULT_MAX_CONNECTIONS = 1024
# However low the descriptor limit, a few agents can still connect.
MIN_CONNECTIONS = 4
# stdio, epoll, the loop's self-pipe, listeners, log files, /proc reads of the
# metrics collector, credential files being re-read, and room for what we forgot.
BASE_DESCRIPTORS = 32
# Used when the limit is unlimited (RLIM_INFINITY): no budget to take from.
UNLIMITED = 1 << 20


def nofile_soft_limit() -> int:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return UNLIMITED if soft == resource.RLIM_INFINITY else int(soft)


def descriptor_reserve(*, s3_connections: int, accept_burst: int, other_connections: int,
                       lingering_refusals: int) -> int:
    """Descriptors kept out of the client budget.

    *accept_burst*: asyncio accepts up to a listener's backlog in one go before
    any of those connections can be refused, so the backlogs of all listeners are
    held for a moment. *other_connections*: listeners with their own limit (the
    metrics port). *lingering_refusals*: refused connections kept open a moment so
    the client reads the 503 instead of a reset.
    """
    return (BASE_DESCRIPTORS + s3_connections + accept_burst + other_connections
            + lingering_refusals)


def connection_budget(configured: int | None, soft_limit: int, reserve: int) -> int:
    """``min(configured, soft_limit - reserve)``; the descriptor limit never lowers it
    below :data:`MIN_CONNECTIONS` (a configured value may be lower)."""
    wanted = DEFAULT_MAX_CONNECTIONS if configured is None else configured
    return min(wanted, max(MIN_CONNECTIONS, soft_limit - reserve))
