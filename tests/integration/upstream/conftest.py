"""A live sidecar on a loopback TCP port for the upstream AMFS clients, which speak TCP only."""

from __future__ import annotations

import pytest

from tests.fixtures.sidecar import RunningSidecar, SidecarFactory

SIDECAR_AGENT_ID = "pod-agent-7"


@pytest.fixture
def live_sidecar(sidecar_factory: SidecarFactory) -> RunningSidecar:
    return sidecar_factory(listen=("127.0.0.1", 0), agent_id=SIDECAR_AGENT_ID)


@pytest.fixture
def http_url(live_sidecar: RunningSidecar) -> str:
    """What AMFS_HTTP_URL is set to in a pod (there http://127.0.0.1:8741)."""
    assert live_sidecar.sidecar.api_url is not None
    return live_sidecar.sidecar.api_url
