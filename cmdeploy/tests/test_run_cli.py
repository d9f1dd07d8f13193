"""`cmdeploy run --dry-run`, `dns` and `status` without a relay: planning and reporting.

Deploying for real into Debian hosts is the lab's job; here the deploy code runs against
this machine in pyinfra's dry-run mode, which gathers facts but changes nothing.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from chatmaild import health
from cmdeploy import cli, remote
from cmdeploy.remote import RelayState, RemoteError, parse_state

STATE = RelayState(
    ipv4=["192.0.2.10"],
    ipv6=["2001:db8::10"],
    dkim_public_pem="-----BEGIN PUBLIC KEY-----\nMIIBIjAN\nBgkqhk\n-----END PUBLIC KEY-----\n",
    acme_account_uri=None,
    active={"postfix": "active", "dovecot": "failed", "nginx": "active"},
)


def write_ini(tmp_path: Path, domain: str) -> Path:
    ini = tmp_path / "chatmail.ini"
    assert cli.main(["init", domain, "--config", str(ini), "--force"]) == 0
    return ini


@pytest.mark.parametrize("domain", ["chat.example.org", "_chat.example.org", "192.0.2.10"])
def test_dry_run_plans_the_whole_deploy(tmp_path: Path, domain: str) -> None:
    ini = write_ini(tmp_path, domain)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "cmdeploy.cli",
            "run",
            "--config",
            str(ini),
            "--ssh-host",
            "@local",
            "--dry-run",
            # the domains are examples: nothing here may ask the Internet's DNS about them
            "--skip-dns-check",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    output = result.stdout + result.stderr  # pyinfra reports progress on stderr
    assert "Ready:" in output and "pyinfra_entry.py" in output
    assert "dry run: nothing on @local was changed." in result.stdout


def health_report(tmp_path: Path, *, cert_days: float) -> Path:
    """What chatmail-health prints with --json, built by its own code from readings."""
    now = 1_800_000_000.0
    sections = {name: health.Section() for name in health.SECTIONS}
    sections["units"] = health.check_units(["postfix", "dovecot"], "active\nactive\n")
    sections["certificate"] = health.check_certificate("/c.pem", now + cert_days * 86400, now)
    deferred = {
        "queue_name": "deferred",
        "arrival_time": now - 7200,
        "recipients": [{"address": "a@peer.example", "delay_reason": "TLS handshake failed"}],
    }
    sections["queue"] = health.check_queue(json.dumps(deferred), now)
    relay = {"domain": "chat.example.org", "version": "abc123", "addresses": ["192.0.2.10"]}
    path = tmp_path / "report.json"
    path.write_text(json.dumps(health.assemble(relay, sections)))
    return path


def fake_relay(monkeypatch: pytest.MonkeyPatch, report: Path, status: int) -> list[str]:
    """`ssh root@host SCRIPT` answered by printing `report` with exit `status`."""
    scripts: list[str] = []

    def command(host: str, script: str = "python3 -") -> list[str]:
        scripts.append(script)
        return ["sh", "-c", f"cat {report}; exit {status}"]

    monkeypatch.setattr(remote, "command", command)
    return scripts


def test_status_runs_the_relays_health_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    ini = write_ini(tmp_path, "chat.example.org")
    capsys.readouterr()
    scripts = fake_relay(monkeypatch, health_report(tmp_path, cert_days=60), 0)
    assert cli.main(["status", "--config", str(ini)]) == 0
    assert scripts == [
        "/usr/local/lib/chatmaild/venv/bin/chatmail-health"
        " /usr/local/lib/chatmaild/chatmail.ini --json"
    ]
    out = capsys.readouterr().out
    assert out.startswith("chat.example.org   abc123\naddresses:   192.0.2.10\n")
    assert "units:       2 of 2 active" in out
    assert "certificate: /c.pem, 60 days left" in out
    assert "queue: peer.example: TLS handshake failed, 1 message, oldest 2 h" in out


def test_status_json_is_the_report_and_a_problem_exits_1(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    ini = write_ini(tmp_path, "chat.example.org")
    capsys.readouterr()
    fake_relay(monkeypatch, health_report(tmp_path, cert_days=3), 1)
    assert cli.main(["status", "--config", str(ini), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["problems"] == [
        {"section": "certificate", "text": "expires in 3 days (renewal failing?)"}
    ]
    assert report["queue"]["deferred"][0]["domain"] == "peer.example"


def test_status_against_a_relay_without_the_health_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    ini = write_ini(tmp_path, "chat.example.org")
    fake_relay(monkeypatch, tmp_path / "none", 127)
    assert cli.main(["status", "--config", str(ini)]) == 2
    assert "deploy this version with `cmdeploy run`" in capsys.readouterr().err


def test_dns_zonefile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ini = write_ini(tmp_path, "chat.example.org")
    monkeypatch.setattr(cli, "read_state", lambda layout, host: STATE)
    zone = tmp_path / "relay.zone"
    assert cli.main(["dns", "--config", str(ini), "--zonefile", str(zone)]) == 0
    text = zone.read_text()
    assert re.search(r"^chat\.example\.org\.\s+3600 IN A\s+192\.0\.2\.10$", text, re.M)
    assert re.search(r"^chat\.example\.org\.\s+3600 IN AAAA\s+2001:db8::10$", text, re.M)
    assert "p=MIIBIjANBgkqhk" in text  # the relay's DKIM key, joined from its PEM lines


def test_unreachable_relay_is_one_clear_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    ini = write_ini(tmp_path, "chat.example.org")
    refused = "echo 'ssh: connect to host chat.example.org port 22: Connection refused' >&2"
    monkeypatch.setattr(
        remote, "command", lambda host, script="": ["sh", "-c", f"{refused}; exit 255"]
    )
    assert cli.main(["status", "--config", str(ini)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert "Connection refused" in err and "ssh root@chat.example.org" in err


@pytest.mark.parametrize("output", ["", "not json", '{"ipv4": []}'])
def test_garbled_answers(output: str) -> None:
    with pytest.raises(RemoteError, match="unexpected answer"):
        parse_state(output)


def test_webdev_builds_the_pages_once_and_says_where(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import shutil
    import threading

    from cmdeploy import run, www

    ini = write_ini(tmp_path, "chat.example.org")
    src = tmp_path / "www" / "src"
    shutil.copytree(run.WWW_SOURCE, src)
    monkeypatch.setattr(run, "WWW_SOURCE", src)
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    real_watch = www.watch_and_rebuild

    def one_build(*args, on_build, **kwargs):  # type: ignore[no-untyped-def]
        stop = threading.Event()

        def built(paths: list[Path]) -> None:
            on_build(paths)
            stop.set()

        real_watch(*args, on_build=built, stop=stop, interval=0.05, **kwargs)

    monkeypatch.setattr(www, "watch_and_rebuild", one_build)
    assert cli.main(["webdev", "--config", str(ini)]) == 0
    out = capsys.readouterr().out
    assert f"into {tmp_path / 'www' / 'build'}" in out
    assert "no display here" in out
    assert (tmp_path / "www" / "build" / "index.html").exists()
