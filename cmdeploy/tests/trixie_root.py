"""A Debian 13 root with Dovecot 2.4, for the tests that run the relay's 2.4 configuration
with the real binaries (doc/debian13.md).

`scripts/trixie-root` builds it once into /var/cache/chatmail-test/trixie-<hash of its
package list> (or $CHATMAIL_TRIXIE_ROOT-<hash>) and later calls find it there; the first
build takes about a minute. Its programs run by `chroot`, so paths inside the root are the
paths the configuration names, and files for them are written below the root on the host.
A test session holds a shared lock on the root while it runs: the script removes old roots
only when nobody holds theirs.

`overlay` gives a test the root's /etc (and everything else) to write into, the deploy's
files at their real paths beside Debian's own, without changing the shared root.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path, PurePosixPath

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "trixie-root"
_built: Path | None = None
_use_lock: int | None = None  # held for the whole test session (see the script)


def trixie_root() -> Path:
    """The root, built when missing. Skipped without root locally, failed in CI."""
    global _built
    if _built is not None:
        return _built
    if os.geteuid() != 0:
        if os.environ.get("CI"):
            pytest.fail("the Debian 13 root needs root (debootstrap, chroot)")
        pytest.skip("the Debian 13 root needs root (debootstrap, chroot)")
    start = time.monotonic()
    result = subprocess.run([str(SCRIPT)], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        pytest.fail(f"scripts/trixie-root failed:\n{result.stderr}")
    if "built" in result.stderr:
        # the build's cost shows in the test log: it happens once per machine
        print(f"\n{result.stderr.strip()} ({time.monotonic() - start:.0f} s in this run)")
    built = Path(result.stdout.strip())
    global _use_lock
    _use_lock = os.open(f"{built}.use", os.O_RDONLY | os.O_CREAT, 0o644)
    fcntl.flock(_use_lock, fcntl.LOCK_SH)
    _built = built
    return _built


@contextlib.contextmanager
def overlay(root: Path) -> Iterator[Path]:
    """A writable view of `root` (overlayfs): what a test writes there stays in a temp
    directory of its own and goes with it; the shared root is never changed."""
    with tempfile.TemporaryDirectory(prefix="chatmail-trixie-") as tmp:
        upper, work, merged = (Path(tmp) / name for name in ("upper", "work", "merged"))
        for path in (upper, work, merged):
            path.mkdir()
        options = f"lowerdir={root},upperdir={upper},workdir={work}"
        subprocess.run(
            ["mount", "-t", "overlay", "overlay", "-o", options, str(merged)], check=True
        )
        try:
            yield merged
        finally:
            subprocess.run(["umount", str(merged)], check=True)


def install(root: Path, files: dict[str, str]) -> None:
    """Writes the deploy's {path on the relay: content} at those paths below `root`."""
    for name, content in files.items():
        path = root / PurePosixPath(name).relative_to("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content, encoding="utf-8")


def chroot(root: Path, argv: Sequence[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    """Run a program of the root, output captured as text."""
    return subprocess.run(  # type: ignore[call-overload, no-any-return]
        ["chroot", str(root), *argv], capture_output=True, text=True, check=False, **kwargs
    )
