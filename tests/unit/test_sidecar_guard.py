"""Which Host values name loopback."""

from __future__ import annotations

import pytest

from amfs_sidecar.guard import host_is_loopback


@pytest.mark.parametrize("host", ["localhost", "LOCALHOST:8741", "localhost.", "127.0.0.1",
                                  "127.0.0.1:8741", "127.1.2.3:1", "[::1]", "[::1]:8741"])
def test_loopback_hosts(host: str) -> None:
    assert host_is_loopback(host)


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8741", "localhost.evil.example",
                                  "127.0.0.1.nip.io", "10.0.0.1:80", "[::2]:80", "[::1]x",
                                  "[::1", "localhost:http", "0.0.0.0:8741", ""])
def test_other_hosts(host: str) -> None:
    assert not host_is_loopback(host)
