"""Reading a backup archive and checking it, one pass, bounded memory (doc/backup.md).

The archive is input: it may be damaged, or made to harm. `read_archive` takes the tar stream
member by member and hands each to a `Sink` (the restore's staging, or nothing for `verify`):

- the header (first member) must name the expected domain, before anything is written;
- the tar headers are read with bounds (`_Member`): only what the format writes;
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


# A pax extended header carries a member's long name (at most MAX_PATH) and, for a file over
# 8 GiB, its size: a few records. Anything larger is not one the writer made.
MAX_PAX = 4 * fmt.MAX_PATH
PAX_KEYS = ("path", "size", "mtime")  # what tarfile's pax writer puts there for this format
_REFUSED_TYPES = {
    tarfile.SYMTYPE: "a link or device",
    tarfile.LNKTYPE: "a link or device",
    tarfile.CHRTYPE: "a link or device",
    tarfile.BLKTYPE: "a link or device",
    tarfile.FIFOTYPE: "a link or device",
    tarfile.GNUTYPE_SPARSE: "a sparse file",
    tarfile.GNUTYPE_LONGNAME: "a GNU long-name header",
    tarfile.GNUTYPE_LONGLINK: "a GNU long-name header",
    tarfile.XGLTYPE: "a global pax header",
}


class _Refused(ArchiveError):
    """A member header the format does not use; read_archive adds the member's number."""


class _Member(tarfile.TarInfo):
    """tarfile's header reading, bounded: left to itself, tarfile holds an extended header
    (pax, GNU long name) of any size in memory, follows a chain of them by recursion, and
    reads a sparse map of any length. Here only what the format writes gets through: regular
    files, directories, and before a member at most one pax header of at most MAX_PAX bytes
    with the keys in PAX_KEYS (`_proc_member` is tarfile's hook for this)."""

    def _proc_member(self, tar: tarfile.TarFile) -> tarfile.TarInfo:
        if self.type == tarfile.XHDTYPE:
            return self._proc_bounded_pax(tar)
        if self.type not in (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.DIRTYPE):
            raise _Refused(_REFUSED_TYPES.get(self.type, f"tar member type {self.type!r}"))
        member: tarfile.TarInfo = super()._proc_member(tar)  # type: ignore[misc]
        return member

    def _proc_bounded_pax(self, tar: tarfile.TarFile) -> tarfile.TarInfo:
        if self.size > MAX_PAX:
            raise _Refused(f"a pax header over {MAX_PAX} bytes")
        records = _pax_records(tar.fileobj.read(_blocks(self.size)))  # type: ignore[union-attr]
        if any(key not in PAX_KEYS for key in records):
            raise _Refused("a pax header with keys this format does not use")
        buf = tar.fileobj.read(tarfile.BLOCKSIZE)  # type: ignore[union-attr]
        try:
            header = self.frombuf(buf, tar.encoding, tar.errors)  # type: ignore[arg-type]
        except tarfile.HeaderError:
            raise tarfile.ReadError("no member after a pax header") from None
        if header.type == tarfile.XHDTYPE:
            raise _Refused("a pax header after a pax header")
        header.offset = self.offset
        member: tarfile.TarInfo = header._proc_member(tar)
        member.name = records.get("path", member.name)
        member.size = _pax_number(records, "size", member.size)
        member.mtime = _pax_number(records, "mtime", int(member.mtime))
        if member.isreg() and "size" in records:  # the next header follows that much data
            tar.offset = member.offset_data + _blocks(member.size)
        return member


def _pax_number(records: dict[str, str], key: str, default: int) -> int:
    value = records.get(key)
    if value is None:
        return default
    if not (value.isascii() and value.isdigit()):  # the writer puts whole seconds, sizes
        raise tarfile.ReadError(f"a pax {key} that is not a whole number")
    return int(value)


def _blocks(size: int) -> int:
    return -(-size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE


def _pax_records(data: bytes) -> dict[str, str]:
    """The records of a pax header, `<length> <key>=<value>` and a newline each (POSIX.1-2008,
    pax)."""
    records = {}
    pos = 0
    while pos < len(data) and data[pos] != 0:  # NUL: the padding to the block's end
        length, space, _ = data[pos : pos + 12].partition(b" ")
        record = data[pos : pos + int(length)] if space and length.isdigit() else b""
        key, equals, value = record[len(length) + 1 : -1].partition(b"=")
        if not record.endswith(b"\n") or len(record) != int(length) or not equals:
            raise tarfile.ReadError("a damaged pax header")
        try:
            records[key.decode()] = value.decode()
        except UnicodeDecodeError:
            raise tarfile.ReadError("a pax header that is not UTF-8") from None
        pos += len(record)
    return records


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
        tar = tarfile.open(fileobj=stream, mode="r|", tarinfo=_Member)
    except tarfile.TarError:
        raise ArchiveError("not a tar archive") from None
    except _Refused as e:
        raise ArchiveError(f"member 1: {e}: refused") from None
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
            member = _next(tar, index)
            if member is None:
                raise ArchiveError(f"no {fmt.MANIFEST}: the archive is incomplete")
            if member.name == fmt.MANIFEST and member.isreg():
                _compare_manifest(_extract(tar, member), read, header)
                if _next(tar, index + 1) is not None:
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


def _next(tar: tarfile.TarFile, index: int) -> tarfile.TarInfo | None:
    try:
        return tar.next()
    except _Refused as e:
        raise ArchiveError(f"member {index}: {e}: refused") from None


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
    if path in fmt.FILES and member.size > fmt.MAX_SMALL_FILE:
        raise ArchiveError(f"{_where(index, path)}: larger than {fmt.MAX_SMALL_FILE} bytes")
    try:
        if kind == "dir":
            sink.directory(path, mode)
            return fmt.Entry(path, "dir", 0, mode, int(member.mtime), "")
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
