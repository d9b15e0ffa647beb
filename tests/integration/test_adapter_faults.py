"""S3 faults through a real proxy: retries, clear failures, and no double-applied writes."""

from __future__ import annotations

import logging

import pytest

from amfs_s3 import S3Adapter
from amfs_s3.exceptions import S3AccessError
from tests.fixtures.s3 import all_keys
from tests.fixtures.s3_proxy import FaultProxy
from tests.integration.test_adapter import make_entry

VERSION_PUT = "/entries/svc/cfg/v"


def adapter_via(proxy: FaultProxy, bucket: str, **kwargs: object) -> S3Adapter:
    # Reads must reach S3 for its faults to matter: no bytes held from our own writes.
    kwargs.setdefault("body_cache_bytes", 0)
    return S3Adapter(bucket, endpoint_url=proxy.url, aws_access_key_id="testing",
                     aws_secret_access_key="testing", **kwargs)  # type: ignore[arg-type]


def version_keys(s3_client, bucket: str) -> list[str]:  # type: ignore[no-untyped-def]
    return sorted(all_keys(s3_client, bucket, "amfs/default/entries/"))


def test_throttling_and_5xx_are_retried(fault_proxy: FaultProxy, s3_client, bucket) -> None:
    adapter = adapter_via(fault_proxy, bucket)
    assert adapter.conditional_writes_supported
    fault_proxy.add(method="PUT", path_contains=VERSION_PUT, status=503, times=2)
    fault_proxy.add(method="GET", path_contains=VERSION_PUT, status=500, times=1)
    assert adapter.write(make_entry("svc", "cfg", "v")).version == 1
    entry = adapter.read("svc", "cfg")
    assert entry is not None and entry.value == "v"
    assert all(rule.fired == rule.times for rule in fault_proxy.rules)
    assert version_keys(s3_client, bucket) == ["amfs/default/entries/svc/cfg/v1.json"]
    adapter.close()


def test_persistent_failure_is_a_clear_error_and_writes_nothing(
    fault_proxy: FaultProxy, s3_client, bucket
) -> None:
    adapter = adapter_via(fault_proxy, bucket, max_attempts=3)
    assert adapter.conditional_writes_supported
    fault_proxy.add(method="PUT", path_contains=VERSION_PUT, status=500, times=100)
    with pytest.raises(S3AccessError) as caught:
        adapter.write(make_entry("svc", "cfg", "v"))
    assert "PutObject" in str(caught.value) and "InternalError" in str(caught.value)
    assert version_keys(s3_client, bucket) == []
    fault_proxy.add(method="GET", path_contains="list-type=2", status=503, times=100)
    with pytest.raises(S3AccessError, match="ListObjectsV2"):
        adapter.read("svc", "cfg")
    adapter.close()


def test_a_lost_response_is_not_applied_twice(fault_proxy: FaultProxy, s3_client, bucket) -> None:
    adapter = adapter_via(fault_proxy, bucket)
    assert adapter.conditional_writes_supported
    rule = fault_proxy.add(method="PUT", path_contains=VERSION_PUT, drop_after_forward=True)
    written = adapter.write(make_entry("svc", "cfg", "once"))
    assert rule.fired == 1
    assert written.version == 1
    assert version_keys(s3_client, bucket) == ["amfs/default/entries/svc/cfg/v1.json"]
    puts = [p for m, p in fault_proxy.requests if m == "PUT" and VERSION_PUT in p]
    assert len(puts) == 2  # the lost one and botocore's retry, which S3 refused with 412
    adapter.close()


def test_connection_resets_are_retried(fault_proxy: FaultProxy, bucket) -> None:
    adapter = adapter_via(fault_proxy, bucket)
    adapter.write(make_entry("svc", "cfg", "v"))
    rule = fault_proxy.add(method="GET", path_contains=VERSION_PUT, reset=True)
    entry = adapter.read("svc", "cfg")
    assert rule.fired == 1
    assert entry is not None and entry.value == "v"
    adapter.close()


def test_a_provider_that_ignores_if_none_match_is_detected(
    fault_proxy: FaultProxy, bucket, caplog: pytest.LogCaptureFixture
) -> None:
    fault_proxy.add(method="PUT", strip_if_none_match=True, times=-1)
    adapter = adapter_via(fault_proxy, bucket)
    with caplog.at_level(logging.WARNING, logger="amfs_s3.adapter"):
        assert adapter.conditional_writes_supported is False
    assert "ignores If-None-Match" in caplog.text
    # Sequential writes still get distinct versions (HEAD before PUT).
    versions = [adapter.write(make_entry("svc", "cfg", n)).version for n in range(3)]
    assert versions == [1, 2, 3]
    adapter.close()
