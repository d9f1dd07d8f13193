"""Trees another user can write, walked as root without following a symlink (doc/backup.md).

The mailboxes belong to vmail, `registration/uses/` and `handed/` to www-data: a process
running as that user can put a symlink anywhere in them, at any moment. The kernel resolves
a path such as `<home>/cur/<name>` component by component and follows every symlink on the
way, so root reading, renaming or chowning by path could reach outside the tree: /etc/shadow
read into an archive, a restored file renamed into /etc. Here a tree is walked by directory
fds instead: each directory is opened relative to its parent's fd with O_NOFOLLOW, and each
file operation is an *at() call relative to such an fd that does not follow its last
component either. The other user may still swap a name for a symlink between two calls: the
call then fails (ELOOP, ENOTDIR) and raises `SymlinkMet` rather than follow it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
from collections.abc import Iterator, Sequence
from pathlib import Path

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: opening a fifo someone put there returns at once (and is then not a file)
FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class SymlinkMet(Exception):
    """A symlink where a directory or a file was to be: not followed. Its text is where,
    relative to the directory the caller started from."""


def lstat(parent: int | None, name: str | Path) -> os.stat_result | None:
    """`name` in the directory `parent` (None: a path) itself, or None if there is none."""
    try:
        return os.stat(name, dir_fd=parent, follow_symlinks=False)
    except FileNotFoundError:
        return None


def is_symlink(st: os.stat_result | None) -> bool:
    return st is not None and stat.S_ISLNK(st.st_mode)


def open_dir(parent: int | None, name: str | Path) -> int | None:
    """The directory `name` in `parent` (None: a path), opened; None if it is missing or
    not a directory."""
    try:
        return os.open(name, DIR_FLAGS, dir_fd=parent)
    except FileNotFoundError:
        return None
    except NotADirectoryError:  # what O_DIRECTORY|O_NOFOLLOW says of a symlink too
        if is_symlink(lstat(parent, name)):
            raise SymlinkMet(str(name)) from None
        return None


def open_file(parent: int | None, name: str | Path) -> int | None:
    """The regular file `name` in `parent` (None: a path), opened for reading; None if it is
    missing or not a regular file."""
    try:
        fd = os.open(name, FILE_FLAGS, dir_fd=parent)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise SymlinkMet(str(name)) from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        return None
    return fd


def open_path(root: int, parts: Sequence[str]) -> int | None:
    """The directory `parts` below `root`, each component opened without following; None if
    one is missing or not a directory."""
    fd = os.dup(root)
    for depth, part in enumerate(parts, 1):
        try:
            child = open_dir(fd, part)
        except SymlinkMet:
            raise SymlinkMet("/".join(parts[:depth])) from None
        finally:
            os.close(fd)
        if child is None:
            return None
        fd = child
    return fd


@contextlib.contextmanager
def closing(fd: int) -> Iterator[int]:
    try:
        yield fd
    finally:
        os.close(fd)


def remove_tree(parent: int, name: str) -> None:
    """The directory `name` in `parent` and everything in it, if it is there (shutil's
    rmtree with a dir_fd follows no symlink inside)."""
    st = lstat(parent, name)
    if st is None:
        return
    if stat.S_ISLNK(st.st_mode):
        raise SymlinkMet(name)
    shutil.rmtree(name, dir_fd=parent)
