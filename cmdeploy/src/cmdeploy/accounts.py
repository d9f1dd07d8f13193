"""`cmdeploy accounts`, `registration` and `invite`: the relay's `chatmail-accounts` over SSH.

All the logic is in chatmaild (`chatmaild.accountscmd`, doc/accounts.md); this side builds the
command line, runs it as root on the relay and hands its output and exit status through. A
question (delete?) is asked here, on the operator's terminal: the SSH session has none.
"""

from __future__ import annotations

import re
import shlex
import subprocess
from collections.abc import Sequence
from pathlib import Path

from . import remote
from .layout import Layout
from .remote import RemoteError

EXIT_NOT_FOUND = 127  # the shell's "command not found"
EXIT_SSH_FAILED = 255  # ssh's own failure (no connection, key refused)


def tool_script(layout: Layout, args: Sequence[str]) -> str:
    return shlex.join([str(layout.bin("chatmail-accounts")), str(layout.ini), *args])


def run_tool(
    layout: Layout, host: str, args: Sequence[str], timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """`chatmail-accounts INI ARGS` on the relay; RemoteError when it could not run at all."""
    result = remote.run_script(host, tool_script(layout, args), timeout=timeout)
    if result.returncode == EXIT_NOT_FOUND:
        raise RemoteError(
            f"chatmail-accounts is not installed on {host}: deploy this version with `cmdeploy run`"
        )
    if result.returncode == EXIT_SSH_FAILED:
        raise remote.unreachable(host, f"cannot run chatmail-accounts on {host}", result)
    return result


_INVITE_LINE = re.compile(r"invite ([0-9a-f]+): ")


def invite_from_output(output: str) -> tuple[str, str] | None:
    """(id, DCACCOUNT URL) of the invite chatmail-accounts just printed, or None."""
    match = _INVITE_LINE.match(output)
    urls = [line for line in output.splitlines() if line.startswith("DCACCOUNT:")]
    if match is None or len(urls) != 1:
        return None
    return match.group(1), urls[0]


def write_invite_qr(url: str, path: Path) -> None:
    from .www import qr_png

    path.write_bytes(qr_png(url))
