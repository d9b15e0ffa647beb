"""Where the API socket may live: a directory no other local user can tamper with.

The socket has no authentication; its file mode and its directory are the
access control. In a directory anyone may write without the sticky bit,
another user can rename the socket away and put their own in its place; a
symlink that someone else owns can point the sidecar's socket somewhere
else. Both are refused unless the operator says the directory is private
anyway (``--allow-insecure-socket-dir``), as a pod's own ``emptyDir`` is
(mode 0777, but only the pod's containers see it).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from amfs_sidecar.exceptions import InsecureSocketDirError

ALLOW_FLAG = "--allow-insecure-socket-dir"


def _trusted_owner(uid: int) -> bool:
    return uid in (0, os.geteuid())


def _writable_by_others(mode: int) -> bool:
    """World-writable without the sticky bit (``/tmp`` has it, so it is fine)."""
    return bool(mode & stat.S_IWOTH) and not mode & stat.S_ISVTX


def socket_dir_problem(directory: Path) -> str | None:
    """Why *directory* is unsafe for the API socket, or None when it is safe.

    Walks every component from the root: a symlink is followed only when root
    or this user owns it (so ``/var/run -> /run`` passes; in a directory others
    could rewrite, the walk has refused that directory already); any directory
    on the way, the socket's own included, must not be world-writable without
    the sticky bit.
    """
    directory = Path(os.path.abspath(directory))
    current = Path(directory.anchor)
    parts = directory.parts[1:]
    for n, part in enumerate(parts):
        last = n == len(parts) - 1
        nxt = current / part
        info = os.lstat(nxt)
        if stat.S_ISLNK(info.st_mode):
            if not _trusted_owner(info.st_uid):
                return (f"socket directory {directory} is reached through symlink {nxt} "
                        f"owned by uid {info.st_uid}; rule: a symlink on the way must be "
                        f"owned by root or this user (uid {os.geteuid()})")
            target = Path(os.path.realpath(nxt))
            problem = socket_dir_problem(target)  # the target has no symlinks left: no loop
            if problem is not None:
                return problem
            current = target
            continue
        if _writable_by_others(info.st_mode):
            return (f"{'socket directory ' if last else 'directory '}{nxt} is "
                    f"world-writable (mode {stat.S_IMODE(info.st_mode):o}) without the sticky "
                    f"bit, so another user could replace the socket; rule: chmod o-w or +t")
        current = nxt
    return None


def check_socket_dir(directory: Path, *, allow_insecure: bool = False) -> None:
    """Refuse (InsecureSocketDirError) a directory :func:`socket_dir_problem` faults."""
    if allow_insecure:
        return
    problem = socket_dir_problem(directory)
    if problem is not None:
        raise InsecureSocketDirError(
            f"{problem} (start with {ALLOW_FLAG} if only trusted processes can reach it, "
            "e.g. a pod's own emptyDir)"
        )
