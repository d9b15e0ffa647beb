"""``S3Adapter``: AMFS memory entries as versioned JSON objects in any S3-compatible bucket.

Every version is one conditional PUT (``If-None-Match: *``) of a complete
``MemoryEntry`` snapshot; versions are never copied or deleted, so concurrent
writers lose no update and a crash never leaves a key without a current version.
The object layout is fixed in :mod:`amfs_s3.layout`.
"""

from __future__ import annotations

import builtins
import dataclasses
import json
import logging
import os
import random
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from itertools import count
from pathlib import Path
from typing import Any

import boto3
import botocore.session
from amfs_core.abc import AdapterABC, WatchHandle
from amfs_core.embedder import EmbedderABC
from amfs_core.evidence import apply_record_to_entry, cited_entries
from amfs_core.exceptions import VersionConflictError
from amfs_core.models import (
    MemoryEntry,
    MemoryStats,
    OutcomeRecord,
    SearchQuery,
    SemanticQuery,
)
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from pydantic import SecretStr, ValidationError

from amfs_s3 import config as config_module
from amfs_s3 import probe as probe_cache
from amfs_s3 import small_puts, timestamps
from amfs_s3.background import BackgroundQueue
from amfs_s3.clock import StorageClock
from amfs_s3.config import S3Settings
from amfs_s3.deadline import Deadline
from amfs_s3.exceptions import AdapterError, InvalidNameError, S3AccessError
from amfs_s3.idempotency import write_once
from amfs_s3.journal import Change, JournalCursor
from amfs_s3.known import (
    DEFAULT_BODY_CACHE_BYTES,
    DEFAULT_MAX_KEYS,
    KnownVersions,
    VersionBodies,
)
from amfs_s3.layout import Layout, is_within, validate_entity_path, validate_key
from amfs_s3.timestamps import listed_modified_ms
from amfs_s3.watch import WatchLoop

logger = logging.getLogger(__name__)

RequestObserver = Callable[[str, str], None]

# A lost race retries as the next version; this bounds a pathological storm.
MAX_WRITE_ATTEMPTS = 64
# Journal records waiting for S3 after their PUT failed; beyond this the oldest
# are left to the snapshot writer's scan.
MAX_PENDING_JOURNAL_RECORDS = 10_000
# How long close() waits for queued journal records to go out.
CLOSE_JOURNAL_SECONDS = 30.0
# Records fetched by one poll; the rest wait for the next, so memory stays bounded.
MAX_JOURNAL_RECORDS_PER_POLL = 2_000
_CONFLICT_CODES = {"PreconditionFailed", "ConditionalRequestConflict", "412", "409"}
_NOT_FOUND_CODES = {"NoSuchKey", "404", "NotFound"}


def _error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _status(exc: ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)


def _retried(exc: ClientError) -> bool:
    """Whether botocore sent the request more than once before this answer."""
    return int(exc.response.get("ResponseMetadata", {}).get("RetryAttempts", 0) or 0) > 0


def _default_writer_id() -> str:
    host = "".join(c if c.isalnum() or c in "._" else "_" for c in socket.gethostname())[:40]
    return f"{host or 'host'}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


class S3Adapter(AdapterABC):
    """AMFS adapter over S3 with the layout of DESIGN.md.

    ``AgentMemory(agent_id="a", adapter=S3Adapter(bucket="b", prefix="amfs/"))``
    works unchanged. Reads are strongly consistent on S3; ``list()`` fetches
    values concurrently on a bounded pool; ``search()`` and
    ``semantic_search()`` are in-memory scans over ``list()``.
    """

    def __init__(
        self,
        bucket: str | None = None,
        *,
        prefix: str | None = None,
        namespace: str | None = None,
        endpoint_url: str | None = None,
        region_name: str | None = None,
        aws_access_key_id: str | None = None,
        aws_secret_access_key: str | None = None,
        poll_interval: float = config_module.DEFAULT_POLL_INTERVAL,
        resync_interval: float = config_module.DEFAULT_RESYNC_INTERVAL,
        max_workers: int = 16,
        request_observer: RequestObserver | None = None,
        writer_id: str | None = None,
        retry_mode: str = "standard",
        max_attempts: int = config_module.DEFAULT_MAX_ATTEMPTS,
        connect_timeout: float = config_module.DEFAULT_CONNECT_TIMEOUT,
        read_timeout: float = config_module.DEFAULT_READ_TIMEOUT,
        operation_deadline: float | None = None,
        known_keys: int = DEFAULT_MAX_KEYS,
        body_cache_bytes: int = DEFAULT_BODY_CACHE_BYTES,
    ) -> None:
        # What the caller leaves out comes from the documented environment, so the
        # docs' ``export AMFS_S3_BUCKET=...`` + ``S3Adapter()`` works; an explicit
        # ``endpoint_url=""`` (the docs' YAML) means AWS, not "look in the env".
        env = os.environ
        bucket = bucket or env.get(config_module.ENV_BUCKET)
        if not bucket:
            raise config_module.ConfigError(
                "bucket is required: pass S3Adapter(bucket=...) (options.bucket in AMFS "
                f"YAML) or set {config_module.ENV_BUCKET} in the environment"
            )
        if prefix is None:
            prefix = env.get(config_module.ENV_PREFIX, config_module.DEFAULT_PREFIX)
        if namespace is None:
            namespace = env.get(config_module.ENV_NAMESPACE) or config_module.DEFAULT_NAMESPACE
        if endpoint_url is None:
            endpoint_url = env.get(config_module.ENV_ENDPOINT) or None
        region_name = region_name or env.get(config_module.ENV_REGION) or None
        try:
            self.settings = S3Settings(
                bucket=bucket,
                prefix=prefix,
                namespace=namespace,
                endpoint_url=endpoint_url,
                region_name=region_name or config_module.DEFAULT_REGION,
                aws_access_key_id=SecretStr(aws_access_key_id) if aws_access_key_id else None,
                aws_secret_access_key=(
                    SecretStr(aws_secret_access_key) if aws_secret_access_key else None
                ),
                poll_interval=poll_interval,
                resync_interval=resync_interval,
                connect_timeout=connect_timeout,
                read_timeout=read_timeout,
                max_attempts=max_attempts,
                operation_deadline=operation_deadline,
            )
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
            )
            raise config_module.ConfigError(
                f"invalid S3Adapter configuration: {problems}"
            ) from None
        self.layout = Layout(self.settings.prefix, self.settings.namespace)
        self.writer_id = writer_id or _default_writer_id()
        self._observer = request_observer
        self.clock = StorageClock()
        self._future_writers_reported: set[str] = set()
        self.future_records = 0
        self._pending_journal: deque[Change] = deque()
        self._pending_lock = threading.Lock()
        self._journal_queue = BackgroundQueue("amfs-s3-journal")
        self._enqueue_lock = threading.Lock()
        self.known = KnownVersions(known_keys)
        self.bodies = VersionBodies(body_cache_bytes)
        self._botocore_config = Config(
            # total_max_attempts counts the first try too; max_attempts would not.
            retries={"mode": retry_mode, "total_max_attempts": max_attempts},
            max_pool_connections=max(max_workers * 2, 10),
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            user_agent_extra="amfs-k8s",
        )
        self._deadline = Deadline(self.settings.deadline_seconds, connect_timeout, read_timeout)
        self._client_lock = threading.Lock()
        self._client = self._make_client(
            self.settings.aws_access_key_id, self.settings.aws_secret_access_key
        )
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="amfs-s3")
        self._seq = count()
        self._seq_lock = threading.Lock()
        self._conditional_writes: bool | None = None
        self._watch = WatchLoop(self)

    # ------------------------------------------------------------------
    # construction from the three configuration forms
    # ------------------------------------------------------------------

    @classmethod
    def from_settings(cls, settings: S3Settings, **kwargs: Any) -> S3Adapter:
        secret = settings.aws_secret_access_key
        key_id = settings.aws_access_key_id
        return cls(
            settings.bucket,
            prefix=settings.prefix,
            namespace=settings.namespace,
            endpoint_url=settings.endpoint_url or "",
            region_name=settings.region_name,
            aws_access_key_id=key_id.get_secret_value() if key_id else None,
            aws_secret_access_key=secret.get_secret_value() if secret else None,
            poll_interval=settings.poll_interval,
            resync_interval=settings.resync_interval,
            **{"connect_timeout": settings.connect_timeout, "read_timeout": settings.read_timeout,
               "max_attempts": settings.max_attempts,
               "operation_deadline": settings.operation_deadline, **kwargs},
        )

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None, **kwargs: Any) -> S3Adapter:
        """Settings from ``AMFS_S3_*`` variables; credentials by boto3's standard chain."""
        return cls.from_settings(config_module.from_env(env), **kwargs)

    @classmethod
    def from_yaml(cls, path: str | Path, **kwargs: Any) -> S3Adapter:
        """Settings from an AMFS YAML file whose primary layer is ``s3``."""
        return cls.from_settings(config_module.load_amfs_yaml(path), **kwargs)

    # ------------------------------------------------------------------
    # the S3 client
    # ------------------------------------------------------------------

    def _make_client(self, key_id: SecretStr | None, secret: SecretStr | None) -> Any:
        # One botocore session per client: the parser default below is its own.
        botocore_session = botocore.session.get_session()
        timestamps.install(botocore_session)
        session = boto3.session.Session(botocore_session=botocore_session)
        client = session.client(
            "s3",
            endpoint_url=self.settings.endpoint_url,
            region_name=self.settings.region_name,
            aws_access_key_id=key_id.get_secret_value() if key_id else None,
            aws_secret_access_key=secret.get_secret_value() if secret else None,
            config=self._botocore_config,
        )
        client.meta.events.register("after-call.s3", self._observe_storage_date)
        self._deadline.install(client.meta.events)
        small_puts.install(client.meta.events)
        if self._observer is not None:
            # One event per attempt, retries included, whether an answer came or
            # the connection failed (after-call/after-call-error fire once per call,
            # and the latter carries no operation model).
            client.meta.events.register("response-received.s3", self._observe_attempt)
        return client

    def _observe_storage_date(self, http_response: Any = None, **_: Any) -> None:
        headers = getattr(http_response, "headers", None)
        if headers is not None:
            self.clock.observe(headers.get("Date"))

    def _observe_attempt(self, event_name: str = "", response_dict: Any = None,
                         exception: Any = None, **_: Any) -> None:
        if self._observer is None:
            return
        operation = event_name.rsplit(".", 1)[-1]  # response-received.s3.PutObject
        if exception is not None or response_dict is None:
            self._observer(operation, "error")
            return
        status = int(response_dict.get("status_code") or 200)
        self._observer(operation, "success" if status < 400 else self._outcome_for_status(status))

    @staticmethod
    def _outcome_for_status(status: int) -> str:
        if status == 404:
            return "not_found"
        if status in (409, 412):
            return "conflict"
        return "error"

    @property
    def client(self) -> Any:
        with self._client_lock:
            return self._client

    def update_credentials(self, access_key_id: str | None, secret_access_key: str | None) -> None:
        """Swap in rotated credentials; requests already in flight finish on the old client."""
        key_id = SecretStr(access_key_id) if access_key_id else None
        secret = SecretStr(secret_access_key) if secret_access_key else None
        new_client = self._make_client(key_id, secret)
        with self._client_lock:
            self._client = new_client
            self.settings = self.settings.model_copy(
                update={"aws_access_key_id": key_id, "aws_secret_access_key": secret}
            )
        logger.info("S3 credentials reloaded for bucket=%s", self.settings.bucket)

    def _call(self, operation: str, object_key: str, **params: Any) -> Any:
        """One S3 call with boto3's retries; failures become S3AccessError."""
        method = getattr(self.client, operation)
        try:
            return method(Bucket=self.settings.bucket, **params)
        except ClientError as exc:
            if _error_code(exc) == "NoSuchBucket":
                raise self._missing_bucket(operation, object_key) from None
            raise
        except BotoCoreError as exc:
            raise S3AccessError(operation, object_key, str(exc)) from exc

    def _missing_bucket(self, operation: str, object_key: str) -> S3AccessError:
        where = f" at {self.settings.endpoint_url}" if self.settings.endpoint_url else ""
        return S3AccessError(operation, object_key,
                             f"bucket {self.settings.bucket!r} does not exist{where}")

    def _failure(self, operation: str, object_key: str, exc: ClientError) -> S3AccessError:
        error = exc.response.get("Error", {})
        detail = f"{error.get('Code', 'error')} (HTTP {_status(exc)}): {error.get('Message', '')}"
        return S3AccessError(operation, object_key, detail.strip().rstrip(":"))

    def _get_json(self, object_key: str) -> dict[str, Any] | None:
        """GET an object as JSON; ``None`` only when S3 says it does not exist."""
        body = self._get_bytes(object_key)
        return None if body is None else self._parse_json(object_key, body)

    def _get_bytes(self, object_key: str) -> bytes | None:
        try:
            response = self._call("get_object", object_key, Key=object_key)
            return bytes(response["Body"].read())
        except ClientError as exc:
            if _error_code(exc) in _NOT_FOUND_CODES or _status(exc) == 404:
                return None
            raise self._failure("GetObject", object_key, exc) from None

    @staticmethod
    def _parse_json(object_key: str, body: bytes) -> dict[str, Any]:
        try:
            data = json.loads(body)
        except ValueError as exc:
            raise AdapterError(f"object {object_key!r} is not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise AdapterError(f"object {object_key!r} is not a JSON object")
        return data

    def _list(self, prefix: str, *, delimiter: str | None = None,
              start_after: str | None = None, page_size: int | None = None,
              ) -> Iterator[dict[str, Any]]:
        """Yield every page of a ListObjectsV2 (boto3's paginator: ContinuationToken),
        of *page_size* keys each when given (MaxKeys), else the provider's 1,000."""
        params: dict[str, Any] = {"Bucket": self.settings.bucket, "Prefix": prefix}
        if delimiter:
            params["Delimiter"] = delimiter
        if start_after:
            params["StartAfter"] = start_after
        if page_size:
            params["PaginationConfig"] = {"PageSize": page_size}
        try:
            yield from self.client.get_paginator("list_objects_v2").paginate(**params)
        except ClientError as exc:
            if _error_code(exc) == "NoSuchBucket":
                raise self._missing_bucket("ListObjectsV2", prefix) from None
            raise self._failure("ListObjectsV2", prefix, exc) from None
        except BotoCoreError as exc:
            raise S3AccessError("ListObjectsV2", prefix, str(exc)) from exc

    # ------------------------------------------------------------------
    # bucket checks and the conditional-write probe
    # ------------------------------------------------------------------

    def check_bucket(self) -> None:
        """HeadBucket: raise S3AccessError saying why the bucket cannot be used."""
        try:
            self._call("head_bucket", self.settings.bucket)
        except ClientError as exc:
            status = _status(exc)
            if status == 404:
                reason = f"bucket {self.settings.bucket!r} does not exist"
            elif status == 403:
                reason = (
                    f"access to bucket {self.settings.bucket!r} is denied for these credentials"
                )
            else:
                reason = f"HTTP {status} {_error_code(exc)}"
            raise S3AccessError("HeadBucket", self.settings.bucket, reason) from None

    @property
    def conditional_writes_supported(self) -> bool:
        """Whether the provider honours ``If-None-Match: *``: probed once per
        endpoint and bucket in this process (:mod:`amfs_s3.probe`), on first use."""
        if self._conditional_writes is None:
            self._conditional_writes = probe_cache.cached(
                self.settings.endpoint_url, self.settings.bucket, self.probe_conditional_writes
            )
        return self._conditional_writes

    @property
    def probe_key(self) -> str:
        return f"{self.layout.probe_root}{probe_cache.PROBE_FILE}"

    def probe_conditional_writes(self) -> bool:
        """PUT the probe object with ``If-None-Match: *`` until S3 has answered for an
        object that exists: 412 means the condition is honoured, 200 that it is not.

        Needs no DeleteObject permission: the object is deleted if we may, and
        otherwise stays as the one small object at :attr:`probe_key`, where the
        next probe finds it (one PUT answered 412).
        """
        probe_key = self.probe_key
        created = False
        supported: bool | None = None
        for _ in range(2):
            try:
                self._call("put_object", probe_key, Key=probe_key, Body=probe_cache.PROBE_BODY,
                           IfNoneMatch="*")
            except ClientError as exc:
                if _error_code(exc) in _CONFLICT_CODES or _status(exc) in (409, 412):
                    supported = True
                elif _status(exc) == 501 or _error_code(exc) == "NotImplemented":
                    supported = False
                else:
                    raise self._failure("PutObject", probe_key, exc) from None
                break
            if created:
                supported = False  # the same object twice: the condition was ignored
                break
            created = True
        if created:
            self._delete_probe_object(probe_key)
        assert supported is not None
        if not supported:
            logger.warning(
                "S3 provider at %s ignores If-None-Match on PUT: concurrent writers to one key "
                "can overwrite each other's versions. Use a provider with conditional writes "
                "(AWS S3, R2, MinIO >= 2024-11, ...) for multi-writer safety.",
                self.settings.endpoint_url or "AWS S3",
            )
        return supported

    def _delete_probe_object(self, probe_key: str) -> None:
        try:
            self._call("delete_object", probe_key, Key=probe_key)
        except (ClientError, S3AccessError) as exc:
            logger.info("conditional-write probe object %s left in place (DELETE: %s); "
                        "the next probe reuses it", probe_key, exc)

    # ------------------------------------------------------------------
    # versions of one key
    # ------------------------------------------------------------------

    def _versions_of(self, entity_path: str, key: str) -> list[int]:
        """The version numbers stored for (entity_path, key): its *direct* objects only."""
        key_dir = self.layout.key_dir(entity_path, key)
        versions: list[int] = []
        for page in self._list(key_dir, delimiter="/"):
            for obj in page.get("Contents", []):
                number = self.layout.parse_version_file(obj["Key"][len(key_dir) :])
                if number is not None:
                    versions.append(number)
        return sorted(versions)

    def current_version(self, entity_path: str, key: str) -> int:
        """The highest stored version of the key, 0 when it has none. One LIST."""
        versions = self._versions_of(entity_path, key)
        return versions[-1] if versions else 0

    def _load_entry(self, entity_path: str, key: str, version: int) -> MemoryEntry | None:
        """Exactly that version: from :attr:`bodies` when held (versions never
        change), else one GET. None when it does not exist."""
        object_key = self.layout.version_key(entity_path, key, version)
        body = self.bodies.get(entity_path, key, version)
        if body is None:
            body = self._get_bytes(object_key)
            if body is None:
                return None
            self.bodies.put(entity_path, key, version, body)
        data = self._parse_json(object_key, body)
        try:
            return MemoryEntry.model_validate(data)
        except ValidationError as exc:
            raise AdapterError(f"object {object_key!r} is not a valid MemoryEntry: {exc}") from None

    # ------------------------------------------------------------------
    # read
    # ------------------------------------------------------------------

    def read(
        self,
        entity_path: str,
        key: str,
        *,
        min_confidence: float = 0.0,
        branch: str = "main",
    ) -> MemoryEntry | None:
        """The current version, or None. A failed S3 call raises; it is never 'not found'."""
        validate_entity_path(entity_path)
        validate_key(key)
        entry = self._read_current(entity_path, key, speculate=True)
        if entry is None or entry.confidence < min_confidence or entry.is_expired():
            return None
        return entry

    def _read_current(self, entity_path: str, key: str, *, speculate: bool) -> MemoryEntry | None:
        """LIST for the current version, then its bytes: held in :attr:`bodies`
        (versions are immutable), else a GET. With *speculate* and a known version
        not held, its GET runs beside the LIST and is the answer whenever the LIST
        agrees: two round trips in the time of one. Pool threads pass
        ``speculate=False`` so no job waits on the pool."""
        known = self.known.get(entity_path, key)
        early = (self._pool.submit(self._load_entry, entity_path, key, known)
                 if speculate and known is not None
                 and self.bodies.get(entity_path, key, known) is None else None)
        entry: MemoryEntry | None = None
        try:
            # A version seen in the listing cannot vanish (versions are never deleted)
            # unless the whole memory is being removed; one re-list covers that race.
            for _ in range(2):
                version = self.current_version(entity_path, key)
                if version == 0:
                    self.known.forget(entity_path, key)
                    return None
                self.known.note(entity_path, key, version)
                if early is not None and version == known:
                    entry, early = early.result(), None
                else:
                    entry = self._load_entry(entity_path, key, version)
                if entry is not None:
                    return entry
            return None
        finally:
            if early is not None:
                # Not used; wait so no request of ours outlives the call.
                early.exception()

    def read_at_version(self, entity_path: str, key: str, version: int) -> MemoryEntry | None:
        """Exactly *version* of the key (one GET), or None when it was never written."""
        validate_entity_path(entity_path)
        validate_key(key)
        return self._load_entry(entity_path, key, version)

    def history(self, entity_path: str, key: str) -> list[MemoryEntry]:
        """Every stored version of the key, oldest first."""
        versions = self._versions_of(entity_path, key)
        loaded = self._pool.map(lambda v: self._load_entry(entity_path, key, v), versions)
        return [e for e in loaded if e is not None]

    # ------------------------------------------------------------------
    # write
    # ------------------------------------------------------------------

    def write(self, entry: MemoryEntry, *, idempotency_key: str | None = None) -> MemoryEntry:
        """Store a new version of ``entry.entity_path/entry.key``.

        ``entry.version > 1`` is the version the caller means to create: if it
        is not the next one, VersionConflictError. ``version == 1`` means
        last-writer-wins: a lost race retries as the next version.
        With *idempotency_key*, a retry returns the first write's version
        (:mod:`amfs_s3.idempotency`).
        """
        written, _ = write_once(self, entry, idempotency_key)
        return written

    def write_with_change(
        self, entry: MemoryEntry, *, known_version: int | None = None,
        wait_for_journal: bool = False, metadata: dict[str, str] | None = None,
    ) -> tuple[MemoryEntry, Change]:
        """``write`` that also returns the journal change it recorded; *metadata*
        goes on the version object (S3 user metadata).

        *known_version* is the caller's belief about the key's current version
        (0: no version), e.g. the sidecar's index; without it the adapter's own
        :attr:`known` cache is asked. Either is only a hint: a stale one costs a
        412 and a LIST, never an update. With *wait_for_journal* the call returns
        only once the journal record was PUT (or held for retry), for callers
        that promise other processes will hear of the write (the sidecar's API).
        """
        entity_path, key = entry.entity_path, entry.key
        self.layout.check_names(entity_path, key, entry.version)
        # Serialise once up front so a value that cannot be stored fails before any PUT.
        self._serialise(entry)
        expected = entry.version if entry.version > 1 else None
        believed = known_version if known_version is not None else (
            self.known.get(entity_path, key))

        if expected is not None:
            # Versions are dense and never deleted, so a belief at or past
            # expected - 1 decides without a LIST; a lower one may be stale.
            if believed is None or believed < expected - 1:
                believed = self.current_version(entity_path, key)
            if believed != expected - 1:
                raise VersionConflictError(entity_path, key, expected, believed)
        # A new key is one PUT of v1: the 412 of an existing key says to look.
        version = (believed or 0) + 1
        listed = False

        for losses in range(1, MAX_WRITE_ATTEMPTS + 1):
            candidate = entry.model_copy(update={"version": version})
            body = self._serialise(candidate)
            object_key = self.layout.version_key(entity_path, key, version)
            if self._put_new(object_key, body, metadata):
                self.known.note(entity_path, key, version)
                self.bodies.put(entity_path, key, version, body)
                change = self._journal_write(candidate, wait=wait_for_journal)
                self._watch.note_local(change, candidate)
                return candidate, change
            self.known.forget(entity_path, key)
            if expected is not None:
                raise VersionConflictError(entity_path, key, expected, version)
            if not listed:
                # The guess came from a cache or from nothing: ask S3 once, no wait.
                version = self.current_version(entity_path, key) + 1
                listed = True
                continue
            # Jittered backoff spreads a crowd of writers out, so no one starves;
            # guessing the next number is usually right, and after repeated
            # losses the field has moved on, so ask S3 where it stands.
            time.sleep(random.uniform(0, min(0.01 * 2 ** min(losses, 6), 0.5)))
            if losses % 3 == 0:
                version = self.current_version(entity_path, key) + 1
            else:
                version += 1
        raise AdapterError(
            f"gave up writing {entity_path}/{key} after {MAX_WRITE_ATTEMPTS} lost races"
        )

    @staticmethod
    def _serialise(entry: MemoryEntry) -> bytes:
        # The value must be plain JSON as given: pydantic and json.dumps would
        # quietly turn NaN into null, a datetime or a dict key 1 into a string,
        # a tuple into a list, and the entry would not read back as written.
        problem = json_value_problem(entry.value)
        if problem is not None:
            raise InvalidNameError(
                "value", f"cannot be stored as JSON: {problem}",
                "values must be JSON: objects with string keys, arrays, strings, finite "
                "numbers, booleans, null",
            )
        try:
            return json.dumps(
                entry.model_dump(mode="json"), ensure_ascii=False, allow_nan=False
            ).encode("utf-8")
        except (ValueError, TypeError) as exc:
            raise InvalidNameError(
                "value", f"cannot be stored as JSON: {exc}", "values must be JSON-serialisable"
            ) from None

    def _put_new(self, object_key: str, body: bytes,
                 metadata: dict[str, str] | None = None) -> bool:
        """PUT *body* at *object_key* only if nothing is there. False: someone else won.

        If our own earlier attempt landed but its response was lost, botocore's
        retry sees 412; the stored bytes being ours makes that a success, so a
        retried write is never applied twice as two versions.
        """
        if not self.conditional_writes_supported and self._exists(object_key):
            # The provider would overwrite silently; a HEAD narrows the race to
            # the gap between two requests, which is the best it allows.
            return False
        try:
            self._call(
                "put_object",
                object_key,
                Key=object_key,
                Body=body,
                IfNoneMatch="*",
                ContentType="application/json",
                **({"Metadata": metadata} if metadata else {}),
            )
            return True
        except ClientError as exc:
            if _error_code(exc) in _CONFLICT_CODES or _status(exc) in (409, 412):
                # Only a retried PUT can meet its own earlier attempt; a first
                # attempt's 412 is somebody else's version, no GET needed.
                return _retried(exc) and self._stored_bytes(object_key) == body
            raise self._failure("PutObject", object_key, exc) from None

    def _exists(self, object_key: str) -> bool:
        try:
            self._call("head_object", object_key, Key=object_key)
            return True
        except ClientError as exc:
            if _status(exc) == 404:
                return False
            raise self._failure("HeadObject", object_key, exc) from None

    def _stored_bytes(self, object_key: str) -> bytes | None:
        try:
            return bytes(self._call("get_object", object_key, Key=object_key)["Body"].read())
        except ClientError as exc:
            if _status(exc) == 404:
                return None
            raise self._failure("GetObject", object_key, exc) from None

    def _next_journal_key(self) -> tuple[str, int]:
        with self._seq_lock:
            seq = next(self._seq)
        # The storage's clock, not ours: see amfs_s3.clock.
        ms = self.clock.now_ms()
        return self.layout.journal_key(ms, self.writer_id, seq), ms

    def _journal(self, change_kwargs: dict[str, Any], *, wait: bool = False) -> Change:
        """Queue the journal record of a change, PUT in order off the caller's path
        (unless *wait*: then once it went out, or was held for retry).

        The change is already durable (its version object is stored); the record
        is the notice to other processes, and :meth:`_write_journal_record`
        keeps retrying it until S3 takes it.
        """
        done = threading.Event()

        def job() -> None:
            try:
                self._write_journal_record(change)
            finally:
                done.set()

        with self._enqueue_lock:  # journal keys in the order their PUTs go out
            journal_key, ms = self._next_journal_key()
            change = Change(journal_key=journal_key, written_at_ms=ms, writer=self.writer_id,
                            **change_kwargs)
            self._journal_queue.submit(job)
        if wait:
            done.wait()  # bounded: each PUT has its deadline, a failure is held
        return change

    def _write_journal_record(self, change: Change) -> None:
        """Older held records first, where S3 lets us; one that fails waits in
        :attr:`pending_journal_records` for :meth:`flush_journal`, never lost in silence."""
        self.flush_journal()
        if not self._put_journal_record(change):
            self._hold_journal_record(change)

    def drain_journal(self, timeout: float | None = None) -> bool:
        """Wait until every journal record queued so far was PUT (or held for retry)."""
        return self._journal_queue.drain(timeout)

    def _put_journal_record(self, change: Change) -> bool:
        body = json.dumps(change.to_record()).encode("utf-8")
        try:
            self._call("put_object", change.journal_key, Key=change.journal_key, Body=body,
                       ContentType="application/json")
        except (ClientError, S3AccessError) as exc:
            logger.warning("journal record %s not written (%s); retrying in the background",
                           change.journal_key, exc)
            return False
        return True

    def _hold_journal_record(self, change: Change) -> None:
        with self._pending_lock:
            if len(self._pending_journal) >= MAX_PENDING_JOURNAL_RECORDS:
                dropped = self._pending_journal.popleft()
                # Still not lost: the snapshot writer's scan finds the version
                # and journals it for everybody.
                logger.error("journal backlog full; %s left to the snapshot writer's scan",
                             dropped.journal_key)
            self._pending_journal.append(change)

    @property
    def pending_journal_records(self) -> int:
        """Records not yet in S3: held after a failed PUT, or still queued."""
        return len(self._pending_journal) + self._journal_queue.unfinished

    @property
    def held_journal_records(self) -> int:
        """Records S3 refused, held for :meth:`flush_journal` (not those still queued:
        a busy writer always has some on their way out)."""
        with self._pending_lock:
            return len(self._pending_journal)

    def pending_journal_changes(self) -> builtins.list[Change]:
        """The records waiting for S3, oldest first: in no listing until written."""
        with self._pending_lock:
            return builtins.list(self._pending_journal)

    def flush_journal(self) -> builtins.list[Change]:
        """Write the journal records that failed earlier, oldest first, each under a
        new key in today's time so pollers (who look back only so far) still see
        it; the body keeps the original ``written_at_ms``, so lag tells the truth.
        Stops at the first failure. Returns the records written."""
        written: builtins.list[Change] = []
        while True:
            with self._pending_lock:
                if not self._pending_journal:
                    return written
                held = self._pending_journal[0]
            journal_key, _ = self._next_journal_key()
            change = dataclasses.replace(held, journal_key=journal_key)
            if not self._put_journal_record(change):
                return written
            with self._pending_lock:
                if self._pending_journal and self._pending_journal[0] is held:
                    self._pending_journal.popleft()
            self._watch.note_local(change, None)
            written.append(change)

    def record_found_version(self, entity_path: str, key: str, version: int) -> Change:
        """Journal a version some writer stored without a journal record (found by a
        scan), so every poller learns of it like any other write."""
        return self._journal({"kind": "write", "entity_path": entity_path, "key": key,
                              "version": version})

    def _journal_write(self, entry: MemoryEntry, *, wait: bool = False) -> Change:
        return self._journal({"kind": "write", "entity_path": entry.entity_path,
                              "key": entry.key, "version": entry.version}, wait=wait)

    # ------------------------------------------------------------------
    # list, search, stats
    # ------------------------------------------------------------------

    def scan_versions(
        self, entity_path: str | None = None, *, subtree: bool = True,
        modified_before_ms: int | None = None,
    ) -> dict[tuple[str, str], list[int]]:
        """Every (entity_path, key) with its version numbers, from listings alone (no GETs);
        with *modified_before_ms*, only versions whose LastModified is earlier.

        Costs one LIST per 1,000 objects under the scanned prefix.
        """
        prefix = self.layout.entity_dir(entity_path) if entity_path else self.layout.entries_root
        found: dict[tuple[str, str], list[int]] = {}
        for page in self._list(prefix):
            for obj in page.get("Contents", []):
                parsed = self.layout.parse_entry_key(obj["Key"])
                if parsed is None:
                    continue
                if entity_path and not subtree and parsed.entity_path != entity_path:
                    continue
                if (modified_before_ms is not None
                        and listed_modified_ms(obj) >= modified_before_ms):
                    continue  # a listing without LastModified (0) counts as old
                found.setdefault((parsed.entity_path, parsed.key), []).append(parsed.version)
        for numbers in found.values():
            numbers.sort()
        return found

    def list(
        self,
        entity_path: str | None = None,
        *,
        include_superseded: bool = False,
        subtree: bool = False,
        branch: str = "main",
    ) -> builtins.list[MemoryEntry]:
        """Current entries of *entity_path* (its own keys; descendants only with
        ``subtree=True``), or of the whole namespace when it is None."""
        if entity_path is not None:
            validate_entity_path(entity_path)
        versions = self.scan_versions(entity_path, subtree=subtree or entity_path is None)
        wanted = [
            (ep, key, number)
            for (ep, key), numbers in sorted(versions.items())
            for number in (numbers if include_superseded else numbers[-1:])
        ]
        for (ep, key), numbers in versions.items():
            self.known.note(ep, key, numbers[-1])
        loaded = self._pool.map(lambda item: self._load_entry(*item), wanted)
        return [entry for entry in loaded if entry is not None]

    def search(self, query: SearchQuery) -> builtins.list[MemoryEntry]:
        """AMFS query semantics as an in-memory scan of ``list()`` (S3 has no query language)."""
        return super().search(query)

    def semantic_search(
        self, query: SemanticQuery, embedder: EmbedderABC
    ) -> builtins.list[tuple[MemoryEntry, float]]:
        """Brute-force cosine similarity over entries that carry an embedding."""
        return super().semantic_search(query, embedder)

    def stats(self) -> MemoryStats:
        return super().stats()

    def object_counts(self) -> dict[str, int]:
        """Counts by kind (entries, versions, outcomes) from listings only."""
        versions = self.scan_versions()
        return {
            "entries": len(versions),
            "versions": sum(len(v) for v in versions.values()),
            "outcomes": self.count_outcomes(),
        }

    # ------------------------------------------------------------------
    # outcomes
    # ------------------------------------------------------------------

    def _outcome_keys(self) -> builtins.list[str]:
        keys: builtins.list[str] = []
        for page in self._list(self.layout.outcomes_root):
            keys.extend(
                obj["Key"] for obj in page.get("Contents", [])
                if self.layout.parse_outcome_key(obj["Key"]) is not None
            )
        return keys

    def outcome_refs(self) -> set[str]:
        """The refs of every stored outcome, from listings alone."""
        refs = (self.layout.parse_outcome_key(k) for k in self._outcome_keys())
        return {ref for ref in refs if ref}

    def count_outcomes(self, **_: Any) -> int:
        return len(self._outcome_keys())

    def get_outcome(self, outcome_ref: str) -> OutcomeRecord | None:
        object_key = self.layout.outcome_key(outcome_ref)
        data = self._get_json(object_key)
        if data is None:
            return None
        try:
            return OutcomeRecord.model_validate(data)
        except ValidationError as exc:
            raise AdapterError(
                f"object {object_key!r} is not a valid OutcomeRecord: {exc}"
            ) from None

    def list_outcomes(
        self,
        *,
        entity_path: str | None = None,
        since: datetime | None = None,
        limit: int = 1000,
        outcome_ref: str | None = None,
    ) -> builtins.list[OutcomeRecord]:
        """Stored outcome records, newest first."""
        if outcome_ref is not None:
            records = [r for r in [self.get_outcome(outcome_ref)] if r is not None]
        else:
            refs = [self.layout.parse_outcome_key(k) for k in self._outcome_keys()]
            loaded = self._pool.map(self.get_outcome, [r for r in refs if r])
            records = [r for r in loaded if r is not None]
        if since is not None:
            records = [r for r in records if _aware(r.committed_at) >= _aware(since)]
        if entity_path is not None:
            records = [r for r in records if _cites_entity(r, entity_path)]
        records.sort(key=lambda r: _aware(r.committed_at), reverse=True)
        return records[:limit]

    def commit_outcome(self, record: OutcomeRecord) -> builtins.list[MemoryEntry]:
        """Store the outcome record, then a new version of every cited entry."""
        updated, _ = self.commit_outcome_with_changes(record)
        return updated

    def commit_outcome_with_changes(
        self, record: OutcomeRecord, *, wait_for_journal: bool = False
    ) -> tuple[builtins.list[MemoryEntry], builtins.list[Change]]:
        """Store the record, then re-version each cited entry.

        The record's PUT runs while the cited entries are fetched (a version
        known to this process is one GET, no LIST); the new versions are written
        only once the record is stored, so a failed record changes nothing.
        """
        object_key = self.layout.outcome_key(record.outcome_ref)
        body = json.dumps(record.model_dump(mode="json"), ensure_ascii=False).encode("utf-8")
        stored = self._pool.submit(self._put_outcome_record, object_key, body)
        try:
            cited = [name for name in cited_entries(record) if self._citable(record, *name)]
            currents = [self._outcome_base(*name) for name in cited]
        finally:
            stored.result()
        changes = [self._journal({"kind": "outcome", "outcome_ref": record.outcome_ref},
                                 wait=wait_for_journal)]
        updated: builtins.list[MemoryEntry] = []
        now = datetime.now(UTC)
        for (entity_path, key), current in zip(cited, currents, strict=True):
            result = self._apply_outcome(record, entity_path, key, now, current,
                                         wait_for_journal=wait_for_journal)
            if result is not None:
                updated.append(result[0])
                changes.append(result[1])
        return updated, changes

    def _put_outcome_record(self, object_key: str, body: bytes) -> None:
        try:
            self._call("put_object", object_key, Key=object_key, Body=body,
                       ContentType="application/json")
        except ClientError as exc:
            raise self._failure("PutObject", object_key, exc) from None

    @staticmethod
    def _citable(record: OutcomeRecord, entity_path: str, key: str) -> bool:
        try:
            validate_entity_path(entity_path)
            validate_key(key)
        except InvalidNameError:
            logger.warning("outcome %s cites an invalid entry name %r/%r; skipped",
                           record.outcome_ref, entity_path, key)
            return False
        return True

    def _outcome_base(self, entity_path: str, key: str) -> MemoryEntry | None:
        """The version an outcome builds on: the known one by one GET (a stale
        guess is caught by the conditional PUT), else LIST + GET."""
        known = self.known.get(entity_path, key)
        if known is not None:
            entry = self._load_entry(entity_path, key, known)
            if entry is not None:
                return entry
        return self._read_current(entity_path, key, speculate=False)

    def _apply_outcome(
        self, record: OutcomeRecord, entity_path: str, key: str, now: datetime,
        current: MemoryEntry | None, *, wait_for_journal: bool = False,
    ) -> tuple[MemoryEntry, Change] | None:
        """New version of one cited entry through amfs-core's evidence model.

        It is written as the version after the one it was computed from, so a
        concurrent value write is never buried under a stale snapshot: on a
        conflict the evidence is re-applied to the newer version.
        """
        for _ in range(MAX_WRITE_ATTEMPTS):
            if current is None or current.is_expired():
                logger.warning("outcome %s cites %s/%s, which does not exist",
                               record.outcome_ref, entity_path, key)
                return None
            new_entry, steps = apply_record_to_entry(
                current, record, now=now, version_lookup=self.read_at_version
            )
            if not steps:
                return None
            try:
                return self.write_with_change(
                    new_entry.model_copy(update={"version": current.version + 1}),
                    known_version=current.version, wait_for_journal=wait_for_journal,
                )
            except VersionConflictError:
                current = self._read_current(entity_path, key, speculate=False)
        raise AdapterError(f"outcome {record.outcome_ref}: {entity_path}/{key} kept changing")

    # ------------------------------------------------------------------
    # watch
    # ------------------------------------------------------------------

    def poll_journal(
        self, cursor: JournalCursor, *, confirm: bool = True
    ) -> builtins.list[Change]:
        """New journal records since *cursor*: one LIST, then one GET per new record.

        With ``confirm`` the returned changes count as delivered; without it the
        caller confirms each one (``cursor.confirm``) once it has handled it. A
        record that cannot be fetched ends the batch unconfirmed, so the next
        poll lists it again instead of losing it.
        """
        keys: builtins.list[str] = []
        for page in self._list(self.layout.journal_root, start_after=cursor.start_after()):
            keys.extend(obj["Key"] for obj in page.get("Contents", []))
        changes: builtins.list[Change] = []
        pending = cursor.pending(keys)[:MAX_JOURNAL_RECORDS_PER_POLL]
        # Fetched concurrently (a cold start catches up on many), handled in order.
        fetched = self._pool.map(self._fetch_journal_record, pending)
        for journal_key, (data, error) in zip(pending, fetched, strict=True):
            if cursor.is_from_the_future(journal_key):
                self._report_future_record(journal_key)
            try:
                if error is not None:
                    raise error
            except S3AccessError as exc:
                logger.warning("journal record %s not readable yet (%s); retrying next poll",
                               journal_key, exc)
                break
            except AdapterError as exc:
                # Not JSON: no retry can fix it, and waiting would stall every poller.
                logger.warning("skipping malformed journal record %s: %s", journal_key, exc)
                cursor.confirm(journal_key)
                continue
            change = self._parse_change(journal_key, data)
            if change is None:
                cursor.confirm(journal_key)  # unreadable for good: never retried
                continue
            changes.append(change)
            if confirm:
                cursor.confirm(journal_key)
        return changes

    def journal_page(self, start_after: str, limit: int = 1000
                     ) -> tuple[builtins.list[str], str | None]:
        """One LIST of journal keys after *start_after*, in order, and where the next
        page starts (None: the listing ended). What a stream's replay reads."""
        root = self.layout.journal_root
        try:
            response = self._call("list_objects_v2", root, Prefix=root, StartAfter=start_after,
                                  MaxKeys=limit)
        except ClientError as exc:
            raise self._failure("ListObjectsV2", root, exc) from None
        listed = [obj["Key"] for obj in response.get("Contents", [])]
        keys = [key for key in listed if self.layout.parse_journal_key(key) is not None]
        more = bool(response.get("IsTruncated")) and bool(listed)
        return keys, (listed[-1] if more else None)

    def journal_change(self, journal_key: str) -> Change | None:
        """The record at *journal_key*; None if it is gone or malformed for good."""
        try:
            data = self._get_json(journal_key)
        except S3AccessError:
            raise
        except AdapterError as exc:
            logger.warning("skipping malformed journal record %s: %s", journal_key, exc)
            return None
        return self._parse_change(journal_key, data)
    def _fetch_journal_record(
        self, journal_key: str
    ) -> tuple[dict[str, Any] | None, AdapterError | None]:
        try:
            return self._get_json(journal_key), None
        except AdapterError as exc:
            return None, exc

    def _report_future_record(self, journal_key: str) -> None:
        """Count a record stamped ahead of the storage's clock; warn once per writer."""
        self.future_records += 1
        name = self.layout.parse_journal_key(journal_key)
        writer = name.writer if name is not None else "?"
        if writer in self._future_writers_reported:
            return
        self._future_writers_reported.add(writer)
        ahead = (name.ms - self.clock.now_ms()) / 1000 if name is not None else 0.0
        logger.warning(
            "journal record %s from writer %s is stamped %.1fs ahead of the storage's clock: "
            "that writer's clock is wrong (it is delivered once; pollers do not follow it)",
            journal_key, writer, ahead,
        )

    @staticmethod
    def _parse_change(journal_key: str, data: dict[str, Any] | None) -> Change | None:
        if data is None:
            return None
        try:
            return Change.from_record(journal_key, data)
        except (KeyError, ValueError, TypeError) as exc:
            logger.warning("skipping malformed journal record %s: %s", journal_key, exc)
            return None

    def watch(
        self,
        entity_path: str,
        callback: Callable[[MemoryEntry], None],
    ) -> WatchHandle:
        """Call *callback* with every new version under *entity_path* (its subtree),
        written by this adapter or by any other process, found by polling the journal
        every ``poll_interval`` seconds. Polling runs only while a watch is active."""
        if entity_path not in ("", "*"):
            validate_entity_path(entity_path)
        return self._watch.add(entity_path, callback)

    @property
    def watching(self) -> bool:
        return self._watch.running

    def close(self) -> None:
        """Send the queued journal records (bounded wait), stop the watch poller
        and the GET pool."""
        if not self._journal_queue.close(CLOSE_JOURNAL_SECONDS):
            logger.warning("closing with %d journal record(s) not yet written",
                           self.pending_journal_records)
        self._watch.stop()
        self._pool.shutdown(wait=True)

    def __enter__(self) -> S3Adapter:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _cites_entity(record: OutcomeRecord, entity_path: str) -> bool:
    return any(is_within(ep, entity_path) for ep, _ in cited_entries(record))


MAX_VALUE_DEPTH = 512


def json_value_problem(value: Any, path: str = "value", depth: int = 0) -> str | None:
    """Why *value* would not survive a JSON round trip unchanged, or None if it would."""
    if depth > MAX_VALUE_DEPTH:
        return f"{path} is nested deeper than {MAX_VALUE_DEPTH} levels"
    if value is None or isinstance(value, (bool, str)):
        return None
    if isinstance(value, int):
        return None
    if isinstance(value, float):
        return None if value == value and value not in (float("inf"), float("-inf")) else (
            f"{path} is {value!r}, which JSON cannot represent"
        )
    if isinstance(value, list):
        for n, item in enumerate(value):
            problem = json_value_problem(item, f"{path}[{n}]", depth + 1)
            if problem is not None:
                return problem
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                return f"{path} has the key {key!r}, which is not a string"
            problem = json_value_problem(item, f"{path}[{key!r}]", depth + 1)
            if problem is not None:
                return problem
        return None
    return f"{path} is a {type(value).__name__}, which is not a JSON type"
