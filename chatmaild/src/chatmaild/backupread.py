"""Reading a backup archive and checking it, one pass, bounded memory (doc/backup.md).

The archive is input: it may be damaged, or made to harm. `read_archive` takes the tar stream
member by member and hands each to a `Sink` (the restore's staging, or nothing for `verify`):

- the header (first member) must name the expected domain, before anything is written;
- every member must be a regular file or a directory with a name
  `backupformat.member_error` accepts: no absolute name, no `..`, no link, no device, no
  account of another domain; a single-file area at most 1 MiB;
- the manifest (last member) is compared line by line with what was actually read (size,
  mode, mtime, SHA-256), which a temporary file collects meanwhile; nothing may follow it.

Error lines name a member by its number and area, never by its name (it may hold an address).
"""

from __future__ import annotations

import hashlib
import ipaddress
import itertools
import os
import tarfile
import tempfile
from collections.abc import Callable
from typing import IO, BinaryIO, Protocol

from . import backupformat as fmt
from .backupformat import ArchiveError

CHUNK = 1 << 16
Progress = Callable[[int, int], None]


def address_domain_of(domain: str) -> str:
    try:
        ipaddress.IPv4Address(domain)
    except ValueError:
        return domain
    return f"[{domain}]"


class Sink(Protocol):
    def directory(self, path: str, mode: int) -> None: ...

    def open_file(self, path: str) -> IO[bytes]: ...

    def close_file(self, path: str, f: IO[bytes], mode: int, mtime: int) -> None: ...


class Discard:
    """Only checks the archive (`chatmail-backup verify`, and cmdeploy before sending one)."""

    def directory(self, path: str, mode: int) -> None:
        pass

    def open_file(self, path: str) -> IO[bytes]:
        return open(os.devnull, "wb")  # closed by close_file

    def close_file(self, path: str, f: IO[bytes], mode: int, mtime: int) -> None:
        f.close()


def _where(index: int, path: str) -> str:
    """A member's place for an error line: its number and area, never its name."""
    area = path.split("/")[0] if path.split("/")[0] in fmt.TREES else "a single file"
    return f"member {index} ({area})"


def read_archive(
    stream: BinaryIO,
    sink: Sink,
    expect_domain: str | None,
    progress: Progress | None = None,
) -> fmt.Header:
    """Check the whole archive while handing its members to `sink`; ArchiveError if it is
    not intact, not this relay's (`expect_domain`; None: any), or names anything outside
    the areas."""
    try:
        tar = tarfile.open(fileobj=stream, mode="r|")
    except tarfile.TarError:
        raise ArchiveError("not a tar archive") from None
    read = tempfile.TemporaryFile()  # the manifest lines of what was read, in order
    try:
        first = tar.next()
        if first is None or first.name != fmt.HEADER or not first.isreg():
            raise ArchiveError(f"no {fmt.HEADER} first: not a chatmail backup")
        if first.size > fmt.MAX_SMALL_FILE:
            raise ArchiveError(f"{fmt.HEADER} is too large")
        data = _extract(tar, first).read()
        header = fmt.parse_header(data)
        if expect_domain is not None and header.domain != expect_domain:
            raise ArchiveError(f"the archive is of {header.domain}, this relay is {expect_domain}")
        domain = address_domain_of(header.domain)
        sha = hashlib.sha256(data).hexdigest()
        mode = first.mode & fmt.MODE_MASK
        entry = fmt.Entry(fmt.HEADER, "file", len(data), mode, int(first.mtime), sha)
        read.write(entry.line())
        files = size = 0
        for index in itertools.count(2):
            member = tar.next()
            if member is None:
                raise ArchiveError(f"no {fmt.MANIFEST}: the archive is incomplete")
            if member.name == fmt.MANIFEST and member.isreg():
                _compare_manifest(_extract(tar, member), read, header)
                if tar.next() is not None:
                    raise ArchiveError(f"members after {fmt.MANIFEST}")
                return header
            entry = _member(tar, member, index, domain, sink)
            read.write(entry.line())
            if entry.kind == "file":
                files += 1
                size += entry.size
                if progress is not None:
                    progress(files, size)
    except tarfile.TarError as e:
        raise ArchiveError(f"damaged or incomplete archive ({type(e).__name__})") from None
    finally:
        read.close()
    raise AssertionError("unreachable")


def _extract(tar: tarfile.TarFile, member: tarfile.TarInfo) -> IO[bytes]:
    f = tar.extractfile(member)
    assert f is not None  # a regular file
    return f


def _member(
    tar: tarfile.TarFile, member: tarfile.TarInfo, index: int, domain: str, sink: Sink
) -> fmt.Entry:
    if member.isreg():
        kind, path = "file", member.name
    elif member.isdir():
        kind, path = "dir", member.name.rstrip("/")
    else:
        raise ArchiveError(f"{_where(index, member.name)}: a link or device: refused")
    reason = fmt.member_error(path, kind, domain)
    if reason is not None:
        raise ArchiveError(f"{_where(index, path)}: {reason}: refused")
    mode = member.mode & fmt.MODE_MASK
    if kind == "dir":
        sink.directory(path, mode)
        return fmt.Entry(path, "dir", 0, mode, int(member.mtime), "")
    if path in fmt.FILES and member.size > fmt.MAX_SMALL_FILE:
        raise ArchiveError(f"{_where(index, path)}: larger than {fmt.MAX_SMALL_FILE} bytes")
    try:
        out = sink.open_file(path)
    except (FileExistsError, NotADirectoryError, IsADirectoryError):
        raise ArchiveError(f"{_where(index, path)}: appears twice: refused") from None
    sha = hashlib.sha256()
    source = _extract(tar, member)
    try:
        while chunk := source.read(CHUNK):
            sha.update(chunk)
            out.write(chunk)
    finally:
        sink.close_file(path, out, mode, int(member.mtime))
    return fmt.Entry(path, "file", member.size, mode, int(member.mtime), sha.hexdigest())


def _compare_manifest(manifest: IO[bytes], read: IO[bytes], header: fmt.Header) -> None:
    limit = fmt.MAX_PATH + 512  # a line longer than any entry can be is not one
    if manifest.readline(limit) != header.data():
        raise ArchiveError(f"{fmt.MANIFEST} does not begin with the archive's header")
    read.seek(0)
    for index in itertools.count(1):
        expected = manifest.readline(limit)
        got = read.readline()
        if expected == got == b"":
            return
        if expected != got:
            path = got.decode(errors="replace").split('"path":"', 1)[-1].split('"', 1)[0]
            what = "missing from the archive" if not got else "does not match"
            if not expected:
                what = "not in the manifest"
            raise ArchiveError(f"{fmt.MANIFEST}: {_where(index, path)} {what}: refused")
