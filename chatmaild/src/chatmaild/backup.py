"""Writing a backup archive of a running relay to a stream (doc/backup.md).

One pass, bounded memory: each file goes into the tar stream as it is read, its SHA-256
computed on the way; the manifest lines collect in an unnamed temporary file and become the
last member.

Consistency while the relay runs:

- the small state files (password, tokens, blocked, registration, push queue items) are
  replaced whole by rename (`fsutil.write_atomic`; Dovecot's uidlist, keywords and
  subscriptions likewise), so each is opened once and read whole: one version or the other,
  never a torn one;
- a maildir message file never changes once in `new/` or `cur/`, but Dovecot renames it
  (new -> cur, flags in the name after `:2,`). Listing `new/` before `cur/` means that a
  message moving meanwhile is listed in both or in one, never in none; the set of unique
  parts already written keeps it from being written twice. A file gone between listing and
  opening is looked for again under the same unique part; only when no name has it was the
  message expunged, and it is skipped (counted). An open file stays readable after a rename
  or unlink, so a message once opened is written whole;
- Dovecot's uidlist is read before the folder's messages: a message that arrives meanwhile
  is in the archive without being in the uidlist, and gets a new UID after a restore.

The trees belong to other users (vmail, www-data), who could put a symlink in them to make
root read a file they may not (/etc/shadow) into the archive: they are walked by directory
fds (`nofollow`), and a symlink met is never followed, only counted.
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
import tarfile
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from . import backupformat as fmt
from . import nofollow
from .fsutil import is_temporary_name
from .pushqueue import SPOOL_DIR

Progress = Callable[[int, int], None]  # (files, bytes) so far
ListDir = Callable[[int, str], list[str]]  # an open directory and its member path: names
CHUNK = 1 << 16


def _listdir(fd: int, path: str) -> list[str]:
    return sorted(os.listdir(fd))


@dataclass
class Counts:
    files: int = 0
    bytes: int = 0
    accounts: int = 0
    messages: int = 0
    expunged: int = 0  # listed, then gone under every name before it could be read
    changed: int = 0  # shorter than it was when opened (written in place: never expected)
    symlinks: int = 0  # met in a tree and not followed: nothing the relay makes


class _HashingReader(io.RawIOBase):
    """Reads exactly `size` bytes of `f` for tarfile, hashing them; pads a file that shrank
    with NUL bytes rather than tear the tar stream (and says so in `short`)."""

    def __init__(self, f: BinaryIO, size: int) -> None:
        self.f = f
        self.left = size
        self.sha = hashlib.sha256()
        self.short = False

    def read(self, n: int = -1) -> bytes:
        n = self.left if n < 0 else min(n, self.left)
        data = self.f.read(n) if n else b""
        if len(data) < n:
            self.short = True
            data += b"\0" * (n - len(data))
        self.left -= len(data)
        self.sha.update(data)
        return data


class ArchiveWriter:
    """The header first, then the members, then the manifest of them all."""

    def __init__(self, out: BinaryIO, header: fmt.Header, progress: Progress | None = None) -> None:
        # "w|": a pure stream, nothing is seeked or kept; PAX for long names
        self.tar = tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT)
        self.manifest = tempfile.TemporaryFile()
        self.manifest.write(header.data())
        self.counts = Counts()
        self.progress: Progress | None = None  # the header is no progress
        self.add_bytes(fmt.HEADER, header.data(), mtime=header.created)
        self.progress = progress

    def _info(self, path: str, kind: bytes, size: int, mode: int, mtime: float) -> tarfile.TarInfo:
        info = tarfile.TarInfo(path)
        info.type = kind
        info.size = size
        info.mode = mode & fmt.MODE_MASK
        info.mtime = int(mtime)
        # owners are not carried: the restore gives each file the owner of the place it goes
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        return info

    def _record(self, entry: fmt.Entry) -> None:
        self.manifest.write(entry.line())
        if entry.kind == "file":
            self.counts.files += 1
            self.counts.bytes += entry.size
            if self.progress is not None:
                self.progress(self.counts.files, self.counts.bytes)

    def add_dir(self, path: str, mode: int, mtime: float) -> None:
        info = self._info(path, tarfile.DIRTYPE, 0, mode, mtime)
        self.tar.addfile(info)
        self._record(fmt.Entry(path, "dir", 0, info.mode, int(info.mtime), ""))

    def add_open_file(self, path: str, f: BinaryIO) -> None:
        st = os.fstat(f.fileno())
        info = self._info(path, tarfile.REGTYPE, st.st_size, st.st_mode, st.st_mtime)
        reader = _HashingReader(f, st.st_size)
        self.tar.addfile(info, reader)
        self.counts.changed += reader.short
        sha = reader.sha.hexdigest()
        self._record(fmt.Entry(path, "file", info.size, info.mode, int(info.mtime), sha))

    def add_bytes(self, path: str, data: bytes, mode: int = 0o600, mtime: float = 0) -> None:
        info = self._info(path, tarfile.REGTYPE, len(data), mode, mtime)
        self.tar.addfile(info, io.BytesIO(data))
        sha = hashlib.sha256(data).hexdigest()
        self._record(fmt.Entry(path, "file", len(data), info.mode, int(info.mtime), sha))

    def add_at(self, path: str, parent: int | None, name: str | Path) -> bool:
        """The regular file `name` in the directory `parent` (None: a path), never through a
        symlink (`nofollow.SymlinkMet`); False if there is none now."""
        fd = nofollow.open_file(parent, name)
        if fd is None:
            return False
        with os.fdopen(fd, "rb") as f:
            self.add_open_file(path, f)
        return True

    def add_path(self, path: str, source: Path) -> bool:
        """The regular file at `source`, a path root's config names in root's directories: a
        symlink there is the operator's, and followed (certbot's `live/` names are symlinks
        into `archive/`). False if there is no regular file."""
        try:
            fd = os.open(source, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except (FileNotFoundError, NotADirectoryError):
            return False
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                return False
            self.add_open_file(path, f)
        return True

    def close(self) -> None:
        size = self.manifest.tell()
        self.manifest.seek(0)
        info = self._info(fmt.MANIFEST, tarfile.REGTYPE, size, 0o600, time.time())
        self.tar.addfile(info, self.manifest)
        self.manifest.close()
        self.tar.close()


Walk = Callable[[ArchiveWriter, str, int], None]  # what to write from an open directory


class Backup:
    def __init__(
        self,
        paths: fmt.RelayPaths,
        address_domain: str,
        mail_domain: str,
        listdir: ListDir = _listdir,
    ) -> None:
        self.paths = paths
        self.address_domain = address_domain
        self.mail_domain = mail_domain
        self.listdir = listdir  # tests interleave renames with the listings here

    def write(self, out: BinaryIO, now: float, progress: Progress | None = None) -> Counts:
        w = ArchiveWriter(out, fmt.Header(fmt.FORMAT, self.mail_domain, int(now)), progress)
        for area, path in self.paths.files().items():
            w.add_path(area, path)
        for area, root in self.paths.trees().items():
            self._enter(
                w, area, None, root, self._mailboxes if area == fmt.MAILBOXES else self._tree
            )
        w.close()
        return w.counts

    def _dir(self, w: ArchiveWriter, path: str, parent: int | None, name: str | Path) -> int | None:
        """The directory `name` in `parent` opened, its member `path` written; None if it is
        not a directory now (a symlink is counted, never followed)."""
        try:
            fd = nofollow.open_dir(parent, name)
        except nofollow.SymlinkMet:
            w.counts.symlinks += 1
            return None
        if fd is not None:
            st = os.fstat(fd)
            w.add_dir(path, st.st_mode, st.st_mtime)
        return fd

    def _enter(
        self, w: ArchiveWriter, path: str, parent: int | None, name: str | Path, walk: Walk
    ) -> None:
        """The directory `name` in `parent` as `path`, and what `walk` finds in it."""
        fd = self._dir(w, path, parent, name)
        if fd is not None:
            with nofollow.closing(fd):
                walk(w, path, fd)

    def _file(self, w: ArchiveWriter, path: str, parent: int, name: str) -> None:
        """The regular file `name` in `parent` as `path`, if there is one (a symlink is counted,
        never followed)."""
        try:
            w.add_at(path, parent, name)
        except nofollow.SymlinkMet:
            w.counts.symlinks += 1

    def _tree(self, w: ArchiveWriter, prefix: str, fd: int) -> None:
        """Every directory and regular file below `fd`; symlinks and the like are not ours."""
        for name in self.listdir(fd, prefix):
            st = nofollow.lstat(fd, name)
            if st is None or is_temporary_name(name):
                continue
            if stat.S_ISLNK(st.st_mode):
                w.counts.symlinks += 1
            elif stat.S_ISDIR(st.st_mode):
                self._enter(w, f"{prefix}/{name}", fd, name, self._tree)
            else:
                self._file(w, f"{prefix}/{name}", fd, name)

    def _mailboxes(self, w: ArchiveWriter, prefix: str, root: int) -> None:
        for name in self.listdir(root, prefix):
            path = f"{prefix}/{name}"
            if name == SPOOL_DIR:
                self._enter(w, path, root, name, self._tree)
            elif fmt.member_error(path, "dir", self.address_domain) is None:
                self._enter(w, path, root, name, self._account)

    def _account(self, w: ArchiveWriter, prefix: str, home: int) -> None:
        w.counts.accounts += 1
        for name in fmt.HOME_FILES:
            self._file(w, f"{prefix}/{name}", home, name)
        self._folder(w, prefix, home)  # INBOX is the home itself (Maildir++)
        for name in self.listdir(home, prefix):
            if name.startswith(".") and not is_temporary_name(name):
                self._enter(w, f"{prefix}/{name}", home, name, self._subfolder)

    def _subfolder(self, w: ArchiveWriter, prefix: str, folder: int) -> None:
        for name in fmt.FOLDER_FILES:
            self._file(w, f"{prefix}/{name}", folder, name)
        self._folder(w, prefix, folder)

    def _folder(self, w: ArchiveWriter, prefix: str, folder: int) -> None:
        subs: dict[str, int] = {}  # new/ and cur/, opened once: names below are looked up there
        try:
            for sub in fmt.MAILDIR_SUBDIRS:
                fd = self._dir(w, f"{prefix}/{sub}", folder, sub)
                if fd is not None:
                    subs[sub] = fd
            written: set[str] = set()
            for sub in ("new", "cur"):
                for name in self.listdir(subs[sub], f"{prefix}/{sub}") if sub in subs else []:
                    unique = fmt.unique_part(name)
                    if unique in written:
                        continue  # moved from new/ to cur/ between the two listings
                    try:
                        found = self._message(w, prefix, subs, sub, name)
                    except nofollow.SymlinkMet:
                        w.counts.symlinks += 1
                        continue
                    if found:
                        written.add(unique)
                        w.counts.messages += 1
                    else:
                        w.counts.expunged += 1
        finally:
            for fd in subs.values():
                os.close(fd)

    def _message(
        self, w: ArchiveWriter, prefix: str, subs: dict[str, int], sub: str, name: str
    ) -> bool:
        """Write the message listed as `sub/name`, under the name it has now; False when no
        name holds its unique part any more (expunged)."""
        unique = fmt.unique_part(name)
        for _ in range(5):  # each miss means Dovecot renamed it again meanwhile
            if w.add_at(f"{prefix}/{sub}/{name}", subs[sub], name):
                return True
            now = [
                (s, n)
                for s in ("new", "cur")
                if s in subs
                for n in self.listdir(subs[s], f"{prefix}/{s}")
                if fmt.unique_part(n) == unique
            ]
            if not now:
                return False
            sub, name = now[-1]
        return False
