"""Fixtures and helpers of chatmaild's tests.

The test modules import the helpers as `chatmaild_testing`: several conftest.py files share
the module name `conftest`, and `from conftest import ...` found cmdeploy's online one when
pytest collected that folder first.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from chatmaild.config import Config

HERE = Path(__file__).parent
sys.modules["chatmaild_testing"] = sys.modules[__name__]


def make_config(mailboxes: Path, **params: str) -> Config:
    return Config.from_params(
        {"mail_domain": "example.org", "mailboxes_dir": str(mailboxes), **params}
    )


@pytest.fixture
def config(tmp_path: Path) -> Config:
    mailboxes = tmp_path / "mailboxes"
    mailboxes.mkdir()
    return make_config(mailboxes)


def _dovecot_available() -> str | None:
    if os.geteuid() != 0:
        return "needs root"
    if shutil.which("dovecot") is None:
        return "needs Debian's dovecot-imapd (scripts/test installs it)"
    return None


def dovecot_or_skip() -> None:
    """Component tests need root and Debian's Dovecot: skipped locally without, failed in CI."""
    missing = _dovecot_available()
    if missing and os.environ.get("CI"):
        pytest.fail(f"component tests cannot run: {missing}")
    if missing:
        pytest.skip(missing)


@pytest.fixture(scope="module")
def relay() -> Iterator[object]:
    """A private Dovecot asking the chatmaild services over their sockets (see the harness)."""
    dovecot_or_skip()
    from dovecot_harness import running_relay

    with running_relay() as r:
        yield r


@pytest.fixture(scope="module")
def submission() -> Iterator[object]:
    """The relay's submission path with the real Postfix and `filtermail outgoing` as its milter
    (postfix_harness.running_submission), one per test module."""
    from postfix_harness import postfix_or_skip, running_submission

    postfix_or_skip()
    with running_submission() as instance:
        yield instance
