from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from chatmaild.config import Config, read_config
from cmdeploy.cli import main


def test_init_writes_a_config_that_reads_back(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ini = tmp_path / "chatmail.ini"
    assert main(["init", "chat.example.org", "--config", str(ini)]) == 0
    assert read_config(ini) == Config.from_params({"mail_domain": "chat.example.org"})
    out = capsys.readouterr().out
    for record in (
        "chat.example.org.          3600 IN A",
        "www.chat.example.org.      3600 IN CNAME chat.example.org.",
        "mta-sts.chat.example.org.  3600 IN CNAME chat.example.org.",
    ):
        assert record in out
    assert "ssh root@chat.example.org" in out


def test_init_refuses_to_overwrite_without_force(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ini = tmp_path / "chatmail.ini"
    ini.write_text("[params]\nmail_domain = old.example.org\n")
    assert main(["init", "new.example.org", "--config", str(ini)]) == 2
    assert "--force" in capsys.readouterr().err
    assert "old.example.org" in ini.read_text()
    assert main(["init", "new.example.org", "--config", str(ini), "--force"]) == 0
    assert read_config(ini).mail_domain == "new.example.org"


def test_init_for_an_ipv4_relay(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ini = tmp_path / "chatmail.ini"
    assert main(["init", "192.0.2.10", "--config", str(ini)]) == 0
    assert "user@[192.0.2.10]" in capsys.readouterr().out
    assert read_config(ini).tls_mode == "self"


def test_init_uses_chatmail_ini_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ini = tmp_path / "from-env.ini"
    monkeypatch.setenv("CHATMAIL_INI", str(ini))
    assert main(["init", "chat.example.org"]) == 0
    assert ini.exists()


@pytest.mark.parametrize("domain", ["not a domain", "localhost", "1.2.3", "exa_mple.org"])
def test_bad_domain_is_one_clear_line(tmp_path: Path, domain: str) -> None:
    ini = tmp_path / "chatmail.ini"
    result = subprocess.run(
        [sys.executable, "-m", "cmdeploy.cli", "init", domain, "--config", str(ini)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "domain" in result.stderr and repr(domain) in result.stderr
    assert not ini.exists()


def test_unwritable_config_path_is_one_clear_line(tmp_path: Path) -> None:
    ini = tmp_path / "missing-dir" / "chatmail.ini"
    result = subprocess.run(
        [sys.executable, "-m", "cmdeploy.cli", "init", "chat.example.org", "--config", str(ini)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert str(ini) in result.stderr
