"""Fixtures shared by cmdeploy's tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from cmdeploy import cli


@pytest.fixture
def ini(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> str:
    path = tmp_path / "chatmail.ini"
    assert cli.main(["init", "chat.example.org", "--config", str(path)]) == 0
    capsys.readouterr()
    return str(path)
