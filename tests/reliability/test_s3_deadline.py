"""A hung S3 endpoint: every operation ends by its deadline, and ``/ready`` turns 503.

The fault proxy holds every request (its ``stall`` mode) far longer than the read
timeout; without a total deadline five attempts of the read timeout each, plus
backoff, keep the poller (and so ``/ready``) waiting.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass

import pytest

from amfs_s3 import S3Adapter
from amfs_s3.config import ConfigError, S3Settings
from amfs_s3.exceptions import S3AccessError
from tests.fixtures.s3_proxy import FaultProxy
from tests.fixtures.sidecar import SidecarFactory, wait_until

# Small values so the test is quick; the defaults are 5 + 10 s per attempt, 20 s in all.
CONNECT, READ, DEADLINE, POLL = 0.5, 0.5, 1.5, 0.5
STALL = 4.0  # longer than any attempt: the endpoint "hangs"


def test_a_hung_operation_gives_up_at_its_deadline_not_after_every_attempt(
        fault_proxy: FaultProxy, bucket: str) -> None:
    adapter = S3Adapter(bucket, endpoint_url=fault_proxy.url, aws_access_key_id="testing",
                        aws_secret_access_key="testing", connect_timeout=CONNECT,
                        read_timeout=READ, max_attempts=20, operation_deadline=DEADLINE)
    try:
        adapter.check_bucket()
        fault_proxy.requests.clear()
        fault_proxy.add(stall=STALL, times=-1)
        started = time.monotonic()
        with pytest.raises(S3AccessError) as caught:
            adapter.check_bucket()
        took = time.monotonic() - started
    finally:
        fault_proxy.clear()
        adapter.close()
    print(f"hung HeadBucket gave up after {took:.2f} s (deadline {DEADLINE} s): {caught.value}")
    # 20 attempts were allowed; the deadline left room for only a few.
    assert 1 <= len(fault_proxy.requests) <= 3
    message = str(caught.value)
    assert "operation_deadline 1.5 s" in message and "(last: Read timeout on endpoint URL" \
        in message


def test_the_deadline_must_fit_one_attempt() -> None:
    with pytest.raises(ValueError, match=r"operation_deadline 5 s is shorter than one attempt "
                                         r"\(connect_timeout 5 \+ read_timeout 10 = 15 s\)"):
        S3Settings(bucket="bkt", operation_deadline=5)
    assert S3Settings(bucket="bkt").deadline_seconds == 20
    assert S3Settings(bucket="bkt", read_timeout=30).deadline_seconds == 35
    with pytest.raises(ConfigError, match="operation_deadline"):
        S3Adapter("bkt", read_timeout=10, operation_deadline=3)


def ready_status(url: str) -> tuple[int, dict[str, object]]:
    try:
        with urllib.request.urlopen(url + "/ready", timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@dataclass(frozen=True)
class Timing:
    overrides: dict[str, float]
    poll: float
    deadline: float
    stall: float  # longer than one attempt's read timeout


QUICK = Timing({"poll_interval": POLL, "connect_timeout": CONNECT, "read_timeout": READ,
                "max_attempts": 20, "operation_deadline": DEADLINE}, POLL, DEADLINE, STALL)
# What a pod runs with: the fixture's short poll interval put back to the default.
_POD = S3Settings(bucket="bkt")
DEFAULTS = Timing({"poll_interval": _POD.poll_interval}, _POD.poll_interval,
                  _POD.deadline_seconds, _POD.read_timeout + 2)


@pytest.mark.parametrize("timing", [
    pytest.param(QUICK, id="quick"),
    pytest.param(DEFAULTS, id="defaults", marks=pytest.mark.slow),
])
def test_ready_turns_503_within_poll_interval_plus_deadline_while_s3_hangs(
        sidecar_factory: SidecarFactory, s3_settings: S3Settings,
        fault_proxy: FaultProxy, timing: Timing) -> None:
    settings = S3Settings.model_validate({
        **dict(s3_settings), "endpoint_url": fault_proxy.url, **timing.overrides})
    running = sidecar_factory("hung", settings=settings)
    assert ready_status(running.metrics_url)[0] == 200
    fault_proxy.add(stall=timing.stall, times=-1)
    hung_at = time.monotonic()
    bound = timing.poll + timing.deadline
    # Generous slack for a loaded machine; without the deadline this takes 20 attempts.
    _, body = wait_until(lambda: (answer := ready_status(running.metrics_url))[0] == 503
                              and answer, timeout=bound + 10, interval=0.05,
                              message=f"/ready 503 within {bound} s of S3 hanging")
    unready_after = time.monotonic() - hung_at
    print(f"/ready turned 503 {unready_after:.2f} s after S3 hung "
          f"(bound: poll interval {timing.poll} + deadline {timing.deadline} = {bound} s)")
    print(body)
    assert body["bucket_reachable"] is False and "ListObjectsV2" in str(body["detail"])
    fault_proxy.clear()
    wait_until(lambda: ready_status(running.metrics_url)[0] == 200,
               timeout=timing.stall + timing.poll + 10,
               message="/ready 200 once S3 answers again")
