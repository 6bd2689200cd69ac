"""The sidecar's and the publishers' files in the home, opened so that nobody can aim them.

Every file is opened without following a symbolic link and checked, on the open descriptor, to
be a regular file of this user; directories must belong to this user and be writable by nobody
else. Otherwise whoever planted a symlink, a FIFO or a file of their own under one of our names
could make us truncate or write through it, hang us, or feed us data. Refusals are one line:
the path, what is wrong with it, what to do.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable
from pathlib import Path

# O_NONBLOCK: a FIFO planted under one of our names cannot block the open (a regular file
# ignores the flag). O_NOFOLLOW: a symlink as the last component fails with ELOOP.
SAFE_FLAGS = os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK


class UnsafePath(PermissionError):
    """A path in the home the sidecar or a publisher must not use; the message says why."""


def open_private(path: Path | str, flags: int, mode: int = 0o600) -> int:
    """os.open(path, flags) for a regular file of ours, never through a symlink."""
    try:
        fd = os.open(path, flags | SAFE_FLAGS, mode)
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise UnsafePath(
                f"{path} is a symbolic link, which is never followed here; "
                "remove it and start again"
            ) from None
        raise
    try:
        check_owned(path, os.fstat(fd), stat.S_ISREG, "a regular file")
    except BaseException:
        os.close(fd)
        raise
    return fd


def check_owned(
    path: Path | str, st: os.stat_result, is_kind: Callable[[int], bool], kind: str
) -> None:
    """`st` (of `path`, not followed) must be a `kind` (`is_kind(mode)`) owned by us."""
    if not is_kind(st.st_mode):
        raise UnsafePath(f"{path} is {_kind(st.st_mode)}, not {kind}; move it away and start again")
    if st.st_uid != os.geteuid():
        raise UnsafePath(
            f"{path} belongs to uid {st.st_uid}, not to this user (uid {os.geteuid()}); "
            "remove it and start again"
        )


def check_dir(path: Path, *, private: bool) -> None:
    """`path` (a symlink to it is fine) must be our directory that others cannot write in.

    `private` (the outbox, created 0700): no group write either. The home may be
    group-writable (umask 002 with a group per user) but not world-writable, unless sticky.
    """
    st = os.stat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafePath(f"{path} is {_kind(st.st_mode)}, not a directory; move it away")
    if st.st_uid not in (os.geteuid(), 0):
        raise UnsafePath(
            f"{path} belongs to uid {st.st_uid}, not to this user (uid {os.geteuid()}); "
            "use a directory of your own"
        )
    mode = stat.S_IMODE(st.st_mode)
    if private and mode & 0o022:
        raise UnsafePath(f"{path} is writable by others (mode {mode:o}); run: chmod go-w {path}")
    if mode & 0o002 and not mode & stat.S_ISVTX:
        raise UnsafePath(f"{path} is writable by every user (mode {mode:o}); run: chmod o-w {path}")


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISLNK, "a symbolic link"),
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a device"),
        (stat.S_ISBLK, "a device"),
    ):
        if test(mode):
            return name
    return "a regular file"
