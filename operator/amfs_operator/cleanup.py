"""``deletionPolicy: Delete``: remove the objects under a memory's root, in batches,
except those under prefixes that other live memories claim."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

from amfs_operator.exceptions import S3ProbeError
from amfs_operator.probe import ClientCache, Target, reason_of, translated

log = logging.getLogger(__name__)

DELETE_BATCH = 1000  # DeleteObjects takes at most 1000 keys


def delete_root(
    clients: ClientCache,
    target: Target,
    *,
    keep: Iterable[str] = (),
    progress: Callable[[int], None] | None = None,
) -> int:
    """Delete every object under ``target.root`` but those under a *keep* prefix, in
    batches; returns how many were deleted.

    A missing bucket means nothing is left to delete. Any other error raises
    :class:`S3ProbeError`, so nothing is reported as deleted that was not.
    """
    kept = tuple(keep)
    if any(target.root.startswith(prefix) for prefix in kept):
        raise ValueError(f"the whole root {target.root!r} is kept: nothing may be deleted")
    s3 = clients.client(target)
    deleted = 0
    try:
        with translated(target, "DeleteObjects"):
            pages = s3.get_paginator("list_objects_v2").paginate(
                Bucket=target.bucket,
                Prefix=target.root,
                PaginationConfig={"PageSize": DELETE_BATCH},
            )
            for page in pages:
                # A provider answering with keys outside the prefix deletes nothing there.
                keys = [obj["Key"] for obj in page.get("Contents", [])
                        if obj["Key"].startswith(target.root)
                        and not obj["Key"].startswith(kept)]
                if keys:
                    _delete_batch(s3, target, keys)
                    deleted += len(keys)
                    if progress is not None:
                        progress(deleted)
    except S3ProbeError as exc:
        if exc.reason != "BucketNotFound":
            raise
    return deleted


def _delete_batch(s3: Any, target: Target, keys: list[str]) -> None:
    answer = s3.delete_objects(
        Bucket=target.bucket, Delete={"Objects": [{"Key": k} for k in keys], "Quiet": True}
    )
    errors = answer.get("Errors") or []
    if errors:
        first = errors[0]
        raise S3ProbeError(
            reason_of(str(first.get("Code", ""))),
            f"DeleteObjects refused {len(errors)} of {len(keys)} keys in bucket "
            f"{target.bucket!r}, e.g. {first.get('Key')!r}: {first.get('Code')}",
        )
