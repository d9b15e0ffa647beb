"""Does this S3 endpoint and bucket give the adapter what it relies on?

Each check is one function, ``(Probe) -> Verdict``. They write only under one
fresh ``{prefix}.amfs-check/{id}/`` folder and :func:`run_checks` deletes what they
wrote. :func:`render_table` turns results into the table ``amfs-sidecar
check-storage`` prints. Nothing here parses flags or prints.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, NamedTuple

from botocore.exceptions import BotoCoreError, ClientError

from amfs_s3.clock import parse_http_date
from amfs_s3.layout import MAX_S3_KEY_BYTES, MAX_SEGMENT_BYTES

CHECK_DIR = ".amfs-check"
# Enough rounds to catch a store that is only sometimes stale, few enough to stay quick.
CONSISTENCY_ROUNDS = 5
_PRECONDITION_CODES = {"PreconditionFailed", "ConditionalRequestConflict"}
_NOT_FOUND_CODES = {"NoSuchKey", "NotFound", "404"}


class Status(StrEnum):
    OK = "ok"
    WARN = "warn"  # works, with a caveat the detail states
    FAIL = "FAIL"  # the adapter's guarantees do not hold here
    SKIP = "skip"  # not run: an earlier check failed


class Verdict(NamedTuple):
    """What one check function found."""

    status: Status
    detail: str


@dataclass(frozen=True)
class CheckResult:
    name: str
    status: Status
    detail: str


@dataclass
class Probe:
    """What the checks share: a boto3 S3 client, the bucket, a private folder, and the
    keys written so far (for cleanup)."""

    client: Any
    bucket: str
    root: str
    written: list[str] = field(default_factory=list)
    dates: list[tuple[float, float]] = field(default_factory=list)  # (local, storage)

    @classmethod
    def create(cls, client: Any, bucket: str, prefix: str = "amfs/") -> Probe:
        probe = cls(client, bucket, f"{prefix}{CHECK_DIR}/{uuid.uuid4().hex[:12]}/")
        client.meta.events.register("after-call.s3", probe._observe_date)
        return probe

    def _observe_date(self, http_response: Any = None, **_: Any) -> None:
        storage = parse_http_date(getattr(http_response, "headers", {}).get("Date"))
        if storage is not None:
            self.dates.append((time.time(), storage))

    def key(self, name: str) -> str:
        return self.root + name

    def put(self, key: str, body: bytes = b"amfs check", **params: Any) -> Any:
        self.written.append(key)
        return self.client.put_object(Bucket=self.bucket, Key=key, Body=body, **params)

    def get(self, key: str) -> bytes | None:
        try:
            return bytes(self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read())
        except ClientError as exc:
            if error_code(exc) in _NOT_FOUND_CODES:
                return None
            raise

    def listing(self, prefix: str, **params: Any) -> dict[str, Any]:
        return dict(self.client.list_objects_v2(Bucket=self.bucket, Prefix=prefix, **params))

    def cleanup(self) -> list[str]:
        """Delete every key written; the ones that could not be deleted."""
        left: list[str] = []
        for key in dict.fromkeys(self.written):
            try:
                self.client.delete_object(Bucket=self.bucket, Key=key)
            except (ClientError, BotoCoreError):
                left.append(key)
        self.written.clear()
        return left


def error_code(exc: ClientError) -> str:
    error = exc.response.get("Error", {})
    return str(error.get("Code") or exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode"))


def http_status(exc: ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)


def describe(exc: Exception) -> str:
    if isinstance(exc, ClientError):
        code, status = error_code(exc), http_status(exc)
        return f"HTTP {status}" if code == str(status) else f"{code} (HTTP {status})"
    return f"{type(exc).__name__}: {exc}"


# ----------------------------------------------------------------------
# the checks
# ----------------------------------------------------------------------


def check_bucket_access(probe: Probe) -> Verdict:
    """HeadBucket, then one PUT: can these credentials write here at all?"""
    try:
        probe.client.head_bucket(Bucket=probe.bucket)
        probe.put(probe.key("access"))
    except ClientError as exc:
        status, code = http_status(exc), error_code(exc)
        if status == 404 or code in {"NoSuchBucket", "NotFound"}:
            return Verdict(Status.FAIL, f"bucket {probe.bucket!r} does not exist "
                                                  f"({describe(exc)})")
        if status == 403:
            # Some providers (SeaweedFS among them) answer 403 for a missing bucket too.
            return Verdict(Status.FAIL, f"bucket {probe.bucket!r} is missing or "
                                                  f"access is denied ({describe(exc)}): check "
                                                  "the bucket name and the credentials")
        return Verdict(Status.FAIL, f"bucket {probe.bucket!r}: {describe(exc)}")
    return Verdict(Status.OK, f"HeadBucket and PutObject on {probe.bucket!r} work")


def check_conditional_writes(probe: Probe) -> Verdict:
    """Two PUTs with ``If-None-Match: *``: the second must be refused with 412 (or 409)."""
    key = probe.key("conditional")
    try:
        probe.put(key, b"first", IfNoneMatch="*")
    except ClientError as exc:
        return Verdict(Status.FAIL, f"a first PUT with If-None-Match: * was refused: "
                                              f"{describe(exc)}")
    try:
        probe.put(key, b"second", IfNoneMatch="*")
    except ClientError as exc:
        if http_status(exc) in (409, 412) or error_code(exc) in _PRECONDITION_CODES:
            kept = probe.get(key)
            if kept != b"first":
                return Verdict(Status.FAIL, "the second PUT was refused, but the "
                                                      "object changed anyway")
            return Verdict(Status.OK, f"second PUT with If-None-Match: * refused: "
                                                f"{describe(exc)}")
        return Verdict(Status.FAIL, f"unexpected answer to the second PUT: "
                                              f"{describe(exc)}")
    return Verdict(Status.FAIL, "If-None-Match: * is ignored (the second PUT "
                                          "overwrote the object); the adapter falls back to "
                                          "HEAD before PUT, which racing writers can defeat")


def check_read_after_write(probe: Probe) -> Verdict:
    for round_ in range(CONSISTENCY_ROUNDS):
        key, body = probe.key(f"raw/{round_}"), f"value {round_}".encode()
        probe.put(key, body)
        got = probe.get(key)
        if got != body:
            return Verdict(Status.FAIL, f"GET right after PUT returned "
                                                  f"{'nothing' if got is None else 'other bytes'}"
                                                  f" (round {round_ + 1})")
    return Verdict(Status.OK, f"{CONSISTENCY_ROUNDS} of {CONSISTENCY_ROUNDS} GETs "
                                        "saw the PUT before them")


def check_list_after_write(probe: Probe) -> Verdict:
    folder = probe.key("law/")
    for round_ in range(CONSISTENCY_ROUNDS):
        key = f"{folder}{round_}"
        probe.put(key)
        listed = [obj["Key"] for obj in probe.listing(folder).get("Contents", [])]
        if key not in listed:
            return Verdict(Status.FAIL, f"a listing right after PUT missed the new "
                                                  f"object (round {round_ + 1})")
    return Verdict(Status.OK, f"{CONSISTENCY_ROUNDS} of {CONSISTENCY_ROUNDS} "
                                        "listings saw the PUT before them")


def check_delimiter_listing(probe: Probe) -> Verdict:
    """Prefix + ``/`` delimiter: direct objects in Contents, folders in CommonPrefixes."""
    folder = probe.key("tree/")
    for key in ("a/1", "a/2", "b", "c/d/e"):
        probe.put(folder + key)
    page = probe.listing(folder, Delimiter="/")
    contents = [obj["Key"][len(folder):] for obj in page.get("Contents", [])]
    prefixes = [p["Prefix"][len(folder):] for p in page.get("CommonPrefixes", [])]
    if contents == ["b"] and prefixes == ["a/", "c/"]:
        return Verdict(Status.OK, "Contents ['b'], CommonPrefixes ['a/', 'c/']")
    return Verdict(Status.FAIL, f"expected Contents ['b'] and CommonPrefixes "
                                          f"['a/', 'c/'], got {contents} and {prefixes}")


def check_start_after(probe: Probe) -> Verdict:
    """StartAfter, and keys in byte order (the journal is read with both)."""
    folder = probe.key("start/")
    names = ["0001", "0002", "0010", "0100"]
    for key in names:
        probe.put(folder + key)
    page = probe.listing(folder, StartAfter=folder + "0002")
    listed = [obj["Key"][len(folder):] for obj in page.get("Contents", [])]
    if listed == ["0010", "0100"]:
        return Verdict(Status.OK, "StartAfter skips to the next key, in byte order")
    return Verdict(Status.FAIL, f"StartAfter '0002' over {names} listed {listed}, "
                                          "expected ['0010', '0100']")


def _round_trip(probe: Probe, key: str) -> str | None:
    """None if *key* can be written, read and listed; else what went wrong."""
    try:
        probe.put(key)
    except ClientError as exc:
        return f"PUT refused: {describe(exc)}"
    if probe.get(key) is None:
        return "PUT accepted but the object cannot be read back"
    parent = key.rsplit("/", 1)[0] + "/"
    if key not in [obj["Key"] for obj in probe.listing(parent).get("Contents", [])]:
        return "PUT accepted but the object is not listed"
    return None


def _long_key(root: str, total: int, segment: int) -> str:
    """A key of exactly *total* bytes below *root*, its segments at most *segment* bytes."""
    parts: list[str] = []
    length = len(root.encode())
    while length < total:
        room = total - length - (1 if parts else 0)
        parts.append("k" * min(segment, room))
        length += len(parts[-1]) + (1 if len(parts) > 1 else 0)
    return root + "/".join(parts)


def check_key_length(probe: Probe) -> Verdict:
    key = _long_key(probe.key("long/"), MAX_S3_KEY_BYTES, MAX_SEGMENT_BYTES - 1)
    problem = _round_trip(probe, key)
    if problem is None:
        return Verdict(Status.OK, f"a {MAX_S3_KEY_BYTES:,}-byte key round-trips")
    return Verdict(Status.FAIL, f"a {MAX_S3_KEY_BYTES:,}-byte key: {problem}")


def check_segment_length(probe: Probe) -> Verdict:
    """The layout bounds every segment to 255 bytes; over it is informative only."""
    inner = probe.key("seg/" + "s" * MAX_SEGMENT_BYTES + "/x")
    final = probe.key("seg/" + "f" * MAX_SEGMENT_BYTES)
    for where, key in (("a middle", inner), ("a final", final)):
        problem = _round_trip(probe, key)
        if problem is not None:
            return Verdict(Status.FAIL,
                               f"{where} {MAX_SEGMENT_BYTES}-byte segment: {problem}")
    over = _round_trip(probe, probe.key("seg/" + "o" * (MAX_SEGMENT_BYTES + 1)))
    beyond = ("256 bytes also accepted" if over is None else f"256 bytes refused ({over}); "
              "names are bounded to 255 bytes per segment, so that is never sent")
    return Verdict(Status.OK, f"{MAX_SEGMENT_BYTES}-byte segments round-trip; {beyond}")


def check_backslash(probe: Probe) -> Verdict:
    """Informative: does ``\\`` alias ``/``? The layout escapes both, so either is safe."""
    slash, backslash = probe.key("bs/a/b"), probe.key("bs/a\\b")
    probe.put(slash, b"slash")
    probe.put(backslash, b"backslash")
    if probe.get(slash) == b"slash" and probe.get(backslash) == b"backslash":
        return Verdict(Status.OK, "'a\\b' and 'a/b' are distinct objects")
    return Verdict(Status.OK, "'a\\b' and 'a/b' are the same object here; names "
                                        "escape '\\' as %5C, so no two names share one")


def check_clock(probe: Probe) -> Verdict:
    """The storage's clock from the ``Date`` headers seen so far (journal times use it)."""
    if not probe.dates:
        return Verdict(Status.WARN, "no Date header in any answer: journal times "
                                              "fall back to this machine's clock")
    offsets = sorted(storage - local for local, storage in probe.dates)
    median = offsets[len(offsets) // 2]
    # The header has one-second resolution; its truncation biases the offset by -0.5 s.
    return Verdict(Status.OK, f"storage clock {median + 0.5:+.1f} s from this "
                                        f"machine's (from {len(offsets)} Date headers; journal "
                                        "times use the storage's clock, so offsets are "
                                        "corrected)")


Check = Callable[[Probe], Verdict]
BUCKET_ACCESS: tuple[str, Check] = ("bucket access", check_bucket_access)
CHECKS: Sequence[tuple[str, Check]] = (
    ("conditional writes", check_conditional_writes),
    ("read-after-write", check_read_after_write),
    ("list-after-write", check_list_after_write),
    ("delimiter listing", check_delimiter_listing),
    ("StartAfter", check_start_after),
    ("key length", check_key_length),
    ("segment length", check_segment_length),
    ("backslash in keys", check_backslash),
    ("clock offset", check_clock),
)


def run_checks(probe: Probe, checks: Sequence[tuple[str, Check]] = CHECKS
               ) -> list[CheckResult]:
    """Bucket access first (the rest need it), then *checks*, then cleanup."""
    results = [_run(*BUCKET_ACCESS, probe)]
    try:
        if results[0].status is Status.FAIL:
            results += [CheckResult(name, Status.SKIP, "needs bucket access")
                        for name, _ in checks]
        else:
            results += [_run(name, check, probe) for name, check in checks]
    finally:
        left = probe.cleanup()
        if left:
            results.append(CheckResult("cleanup", Status.WARN, f"{len(left)} object(s) under "
                                       f"{probe.root} could not be deleted"))
        elif results[0].status is not Status.FAIL:
            results.append(CheckResult("cleanup", Status.OK,
                                       f"deleted what it wrote under {probe.root}"))
    return results


def _run(name: str, check: Check, probe: Probe) -> CheckResult:
    """One check; an S3 error it did not expect is its result, not a traceback."""
    try:
        status, detail = check(probe)
    except (ClientError, BotoCoreError) as exc:
        status, detail = Status.FAIL, describe(exc)
    return CheckResult(name, status, detail)


def passed(results: Sequence[CheckResult]) -> bool:
    return all(result.status is not Status.FAIL for result in results)


def render_table(results: Sequence[CheckResult], heading: str = "") -> str:
    """A plain-text table, one row per check, and a closing verdict line."""
    name_width = max(len("check"), *(len(r.name) for r in results))
    status_width = max(len("result"), *(len(str(r.status)) for r in results))
    lines = [heading] if heading else []
    lines.append(f"{'check':<{name_width}}  {'result':<{status_width}}  detail")
    lines.append(f"{'-' * name_width}  {'-' * status_width}  {'-' * 6}")
    lines += [f"{r.name:<{name_width}}  {r.status!s:<{status_width}}  {r.detail}"
              for r in results]
    failed = [r.name for r in results if r.status is Status.FAIL]
    lines.append("")
    lines.append("all checks passed" if not failed
                 else f"{len(failed)} check(s) failed: {', '.join(failed)}")
    return "\n".join(lines)
