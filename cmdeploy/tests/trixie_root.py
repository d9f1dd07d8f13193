"""A Debian 13 root with Dovecot 2.4, for the tests that run the relay's 2.4 configuration
with the real binaries (doc/debian13.md).

`scripts/trixie-root` builds it once into /var/cache/chatmail-test/trixie (or
$CHATMAIL_TRIXIE_ROOT) and later calls find it there; the first build takes about a minute.
Its programs run by `chroot`, so paths inside the root are the paths the configuration
names, and files for them are written below the root on the host.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "trixie-root"
_built: Path | None = None


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
    _built = Path(result.stdout.strip())
    return _built


def chroot(root: Path, argv: Sequence[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    """Run a program of the root, output captured as text."""
    return subprocess.run(  # type: ignore[call-overload, no-any-return]
        ["chroot", str(root), *argv], capture_output=True, text=True, check=False, **kwargs
    )
