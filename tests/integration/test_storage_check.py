"""``amfs-sidecar check-storage`` against each test provider: every check passes, the
table says so, nothing is left behind; a missing bucket or a provider that ignores
``If-None-Match`` fails with exit code 1 and a row that says why."""

from __future__ import annotations

from typing import Any

import pytest

from amfs_sidecar import cli
from tests.fixtures.s3 import S3Server, all_keys
from tests.fixtures.s3_proxy import FaultProxy

ROWS = ("bucket access", "conditional writes", "read-after-write", "list-after-write",
        "delimiter listing", "StartAfter", "key length", "segment length",
        "backslash in keys", "clock offset", "cleanup")


def check(endpoint: str, bucket: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, dict[
        str, tuple[str, str]]]:
    code = cli.main(["check-storage", "--endpoint", endpoint, "--bucket", bucket],
                    env={"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"})
    out = capsys.readouterr().out
    print(out)  # shown on failure
    rows = {}
    for line in out.splitlines():
        for name in ROWS:
            if line.startswith(name + "  "):
                status, _, detail = line[len(name):].strip().partition("  ")
                rows[name] = (status, detail.strip())
    return code, rows


def test_every_check_passes_and_nothing_is_left_behind(
    s3_provider: S3Server, bucket: str, s3_client: Any, capsys: pytest.CaptureFixture[str],
) -> None:
    code, rows = check(s3_provider.endpoint_url, bucket, capsys)
    assert code == 0
    assert list(rows) == list(ROWS)
    assert {name: status for name, (status, _) in rows.items()} == dict.fromkeys(ROWS, "ok")
    assert "412" in rows["conditional writes"][1]
    assert all_keys(s3_client, bucket) == []


def test_backslash_aliasing_and_256_byte_segments_are_reported_as_the_provider_does(
    s3_provider: S3Server, bucket: str, capsys: pytest.CaptureFixture[str],
) -> None:
    """What the layout's escaping and 255-byte bound exist for, seen by the check."""
    _, rows = check(s3_provider.endpoint_url, bucket, capsys)
    aliased = "same object" in rows["backslash in keys"][1]
    refused = "256 bytes refused" in rows["segment length"][1]
    expected = s3_provider.name == "seaweedfs"
    assert (aliased, refused) == (expected, expected)


def test_a_missing_bucket_fails_with_exit_1_and_says_so(
    s3_provider: S3Server, capsys: pytest.CaptureFixture[str],
) -> None:
    code, rows = check(s3_provider.endpoint_url, "no-such-bucket-here", capsys)
    assert code == 1
    status, detail = rows["bucket access"]
    assert status == "FAIL"
    assert "'no-such-bucket-here' does not exist" in detail or "missing or access" in detail
    assert {rows[name][0] for name in ROWS[1:-1]} == {"skip"}


def test_wrong_credentials_say_missing_or_denied(
    s3_provider: S3Server, bucket: str, capsys: pytest.CaptureFixture[str],
) -> None:
    if s3_provider.name == "moto":
        pytest.skip("moto accepts any credentials")
    code = cli.main(["check-storage", "--endpoint", s3_provider.endpoint_url, "--bucket", bucket],
                    env={"AWS_ACCESS_KEY_ID": "nobody", "AWS_SECRET_ACCESS_KEY": "wrong"})
    out = capsys.readouterr().out
    assert code == 1
    assert f"bucket '{bucket}' is missing or access is denied" in out


def test_a_provider_ignoring_if_none_match_fails_the_conditional_write_check(
    fault_proxy: FaultProxy, bucket: str, capsys: pytest.CaptureFixture[str],
) -> None:
    fault_proxy.add(method="PUT", strip_if_none_match=True, times=-1)
    code, rows = check(fault_proxy.url, bucket, capsys)
    assert code == 1
    status, detail = rows["conditional writes"]
    assert status == "FAIL" and "If-None-Match: * is ignored" in detail
    assert "HEAD before PUT" in detail
