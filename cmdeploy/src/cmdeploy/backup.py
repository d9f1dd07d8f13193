"""`cmdeploy backup` and `restore`: the relay's `chatmail-backup` over SSH (doc/backup.md).

The archive streams through the SSH connection in chunks: no copy of it on the relay, none
in memory here. `backup` writes it to `FILE.partial` (mode 0600: it holds password hashes
and the DKIM key), checks it like a restore would, then renames it to FILE; a failed backup
leaves no FILE. `restore` checks the archive here first (manifest, domain, member names), so
a damaged one never reaches the relay, which checks it again all the same: the relay trusts
no archive. The relay's progress lines (files and bytes so far) come through on stderr.
"""

from __future__ import annotations

import os
import shlex
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

from chatmaild.backupformat import ArchiveError, Header
from chatmaild.backupread import Discard, read_archive

from . import remote
from .accounts import EXIT_NOT_FOUND, EXIT_SSH_FAILED
from .layout import Layout
from .remote import RemoteError

CHUNK = 1 << 20
TOOL = "chatmail-backup"


def tool_script(layout: Layout, action: str, flags: Sequence[str] = ()) -> str:
    dkim_dir = str(layout.dkim_key.parent)
    return shlex.join(
        [str(layout.bin(TOOL)), str(layout.ini), action, "--dkim-dir", dkim_dir, *flags]
    )


def _check_exit(host: str, code: int) -> None:
    if code == EXIT_NOT_FOUND:
        raise RemoteError(f"{TOOL} is not installed on {host}: deploy this version first")
    if code == EXIT_SSH_FAILED:
        raise RemoteError(
            f"cannot run {TOOL} on {host}: check that `ssh root@{host}` works without a prompt"
        )


def fetch(layout: Layout, host: str, out: BinaryIO) -> int:
    """The relay's archive into `out`; the number of bytes. RemoteError if it failed."""
    size = 0
    with subprocess.Popen(
        remote.command(host, tool_script(layout, "create")), stdout=subprocess.PIPE
    ) as proc:
        assert proc.stdout is not None
        while chunk := proc.stdout.read(CHUNK):
            out.write(chunk)
            size += len(chunk)
    _check_exit(host, proc.returncode)
    if proc.returncode != 0:
        raise RemoteError(f"{TOOL} on {host} failed (exit {proc.returncode}): no backup written")
    return size


def check(path: Path, domain: str | None) -> Header:
    """The archive's header if it is intact (and of `domain`); RemoteError otherwise."""
    try:
        with open(path, "rb") as f:
            return read_archive(f, Discard(), domain)
    except ArchiveError as e:
        raise RemoteError(f"{path}: {e}") from None


def backup_to(layout: Layout, host: str, path: Path) -> int:
    """Fetch the relay's archive into `path`, checked; its size."""
    if path.exists():
        raise RemoteError(f"{path} exists already: choose another --output")
    partial = path.with_name(path.name + ".partial")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as out:
            size = fetch(layout, host, out)
        check(partial, layout.config.mail_domain)
        os.rename(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return size


def send(
    layout: Layout, host: str, path: Path, flags: Sequence[str] = ()
) -> subprocess.CompletedProcess[str]:
    """`chatmail-backup restore` on the relay, fed the archive at `path`."""
    script = tool_script(layout, "restore", flags)
    with (
        open(path, "rb") as src,
        subprocess.Popen(
            remote.command(host, script),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            bufsize=0,  # unbuffered: nothing left to flush into a pipe the relay closed
        ) as proc,
    ):
        assert proc.stdin is not None and proc.stdout is not None
        try:
            while chunk := src.read(CHUNK):
                proc.stdin.write(chunk)
            proc.stdin.close()
        except BrokenPipeError:
            pass  # the relay refused the archive early (it says why on stderr)
        output = proc.stdout.read().decode(errors="replace")
    _check_exit(host, proc.returncode)
    return subprocess.CompletedProcess(proc.args, proc.returncode, output, "")
