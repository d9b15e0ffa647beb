"""The pure parts of the provider check: the long-key builder and the table."""

from __future__ import annotations

import pytest

from amfs_s3.layout import MAX_S3_KEY_BYTES, MAX_SEGMENT_BYTES
from amfs_s3.storage_check import (
    CheckResult,
    Status,
    _long_key,
    passed,
    render_table,
)


@pytest.mark.parametrize("root", ["amfs/.amfs-check/abc/long/", "p/", "x" * 300 + "/"])
def test_long_key_is_exactly_the_limit_with_bounded_segments(root: str) -> None:
    key = _long_key(root, MAX_S3_KEY_BYTES, MAX_SEGMENT_BYTES - 1)
    assert key.startswith(root)
    assert len(key.encode()) == MAX_S3_KEY_BYTES
    assert all(0 < len(part) < MAX_SEGMENT_BYTES for part in key[len(root):].split("/"))


def test_the_table_lines_up_and_ends_with_a_verdict() -> None:
    results = [CheckResult("bucket access", Status.OK, "fine"),
               CheckResult("conditional writes", Status.FAIL, "ignored"),
               CheckResult("clock offset", Status.WARN, "no Date header")]
    table = render_table(results, heading="S3 storage check")
    lines = table.splitlines()
    assert lines[0] == "S3 storage check"
    assert lines[1].startswith("check               result  detail")
    assert lines[3] == "bucket access       ok      fine"
    assert lines[4] == "conditional writes  FAIL    ignored"
    assert lines[-1] == "1 check(s) failed: conditional writes"
    assert not passed(results)
    assert passed(results[:1] + results[2:])
    assert render_table(results[:1]).splitlines()[-1] == "all checks passed"
