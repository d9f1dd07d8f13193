"""`chatmail-health` as the daily unit runs it: the installed console script, a real
certificate read by the real openssl, the real filesystem; systemctl, ss, ip and postqueue
are small scripts first on PATH that print what a relay's would (this machine runs no systemd
and no Postfix)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

SCRIPT = Path(sys.executable).with_name("chatmail-health")
NOW = time.time()
DEFERRED = {
    "queue_name": "deferred",
    "queue_id": "4F9D1A2B3C",
    "sender": "sender-secret@relay.example",
    "recipients": [
        {
            "address": "rcpt-secret@peer.example",
            "delay_reason": "host peer.example[192.0.2.5] said: 451 4.7.1 Try again later",
        }
    ],
}


def fake(bin_dir: Path, name: str, body: str) -> None:
    path = bin_dir / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)


def certificate(path: Path, days: int) -> None:
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"),
            *("-nodes", "-days", str(days), "-subj", "/CN=chat.example.org"),
            *("-keyout", str(path.with_suffix(".key")), "-out", str(path)),
        ],
        check=True,
        capture_output=True,
    )


@pytest.fixture
def relay(tmp_path: Path) -> Path:
    """A relay's files in `tmp_path`: ini, expectations, mailboxes, certificate, fake tools."""
    if shutil.which("openssl") is None:
        pytest.skip("needs openssl")
    mailboxes = tmp_path / "mail"
    (mailboxes / "pending_notifications").mkdir(parents=True)
    (mailboxes / "pending_notifications" / "0123abcd").write_text("x\n")
    (tmp_path / "chatmail.ini").write_text(
        f"[params]\nmail_domain = _chat.example.org\nmailboxes_dir = {mailboxes}\n"
        f"registration_dir = {tmp_path / 'registration'}\n"
    )
    certificate(tmp_path / "cert.pem", 60)
    (tmp_path / "health.json").write_text(
        json.dumps(
            {
                "units": ["postfix", "dovecot", "chatmail-expire.timer"],
                "ports": [25, 993],
                "certificate": str(tmp_path / "cert.pem"),
            }
        )
    )
    (tmp_path / "health-dns.json").write_text(json.dumps({"records": []}))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake(
        bin_dir,
        "systemctl",
        f"""case "$1" in
is-active) shift; for u in "$@"; do
    if [ "$u" = "${{FAKE_DOWN:-}}" ]; then echo failed; else echo active; fi; done ;;
show) echo Result=success; echo LastTriggerUSec=@{int(NOW - 3600)}
    echo ActiveEnterTimestamp=@{int(NOW - 9 * 86400)} ;;
esac
""",
    )
    fake(
        bin_dir,
        "ss",
        "echo 'LISTEN 0 100 0.0.0.0:25 0.0.0.0:*'\necho 'LISTEN 0 100 [::]:993 [::]:*'\n",
    )
    fake(bin_dir, "ip", "echo '2: eth0    inet 192.0.2.10/24 brd 192.0.2.255 scope global eth0'\n")
    # two hours old when the test runs, however long the suite took to get here
    deferred = {**DEFERRED, "arrival_time": int(time.time() - 7200)}
    fake(bin_dir, "postqueue", f"echo '{json.dumps(deferred)}'\n")
    return tmp_path


def run_health(relay: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            str(SCRIPT),
            str(relay / "chatmail.ini"),
            "--expected",
            str(relay / "health.json"),
            "--expected-dns",
            str(relay / "health-dns.json"),
            "--nocreate-file",
            str(relay / "nocreate"),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "PATH": f"{relay / 'bin'}:{os.environ['PATH']}", **env},
    )


def test_a_healthy_relay_passes_and_reports_its_deferred_queue(relay: Path) -> None:
    done = run_health(relay, "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert report["ok"] is True and report["problems"] == []
    assert report["units"]["active"] == 3
    assert report["listeners"]["missing"] == []
    assert 58 <= report["certificate"]["days_left"] <= 60
    assert report["queue"]["deferred"] == [
        {
            "domain": "peer.example",
            "reason": "host peer.example said: 451 4.7.1 Try again later",
            "messages": 1,
            "oldest_seconds": report["queue"]["deferred"][0]["oldest_seconds"],
        }
    ]
    assert 7200 <= report["queue"]["deferred"][0]["oldest_seconds"] < 7300
    assert report["push"]["waiting"] == 1
    assert report["expiry"]["result"] == "success"
    assert report["relay"]["addresses"] == ["192.0.2.10"]
    # the journal gets the warning, without the addresses or the peer's IP
    assert "chatmail-health: WARNING: queue: peer.example:" in done.stderr
    for secret in ("secret", "@", "192.0.2.5"):
        assert secret not in done.stderr and secret not in json.dumps(report["queue"])


def test_the_report_says_who_may_create_an_account(relay: Path) -> None:
    done = run_health(relay)
    assert "registration: open (chatmail.ini), autorelay allowed\n" in done.stdout
    # set at run time, as `cmdeploy registration invite --refuse-autorelay` does
    (relay / "registration").mkdir()
    (relay / "registration" / "state.json").write_text(
        '{"mode": "invite", "refuse_autorelay": true}'
    )
    (relay / "nocreate").touch()
    done = run_health(relay, "--json")
    assert done.returncode == 0, done.stdout + done.stderr  # the switch is on purpose
    report = json.loads(done.stdout)
    assert report["registration"] == {
        "mode": "invite",
        "refuse_autorelay": True,
        "source": "cmdeploy registration",
        "nocreate": True,
    }
    assert "registration: /etc/chatmail-nocreate exists: no account is created" in done.stderr


def test_an_unreadable_registration_state_fails_the_check(relay: Path) -> None:
    (relay / "registration").mkdir()
    (relay / "registration" / "state.json").write_text('{"mode": "everyone"}')
    done = run_health(relay)
    assert done.returncode == 1
    assert "registration: closed (state.json unusable), autorelay refused\n" in done.stdout
    assert "registration: state.json unusable: registration is closed until it is fixed" in (
        done.stdout
    )


def test_a_certificate_near_its_end_fails_the_check(relay: Path) -> None:
    certificate(relay / "cert.pem", 5)
    done = run_health(relay)
    assert done.returncode == 1
    assert "problems (1):\n  certificate: expires in 4 days" in done.stdout
    assert "chatmail-health: ERROR: certificate: expires in 4 days" in done.stderr


def test_a_failed_unit_and_a_missing_listener_fail_the_check(relay: Path) -> None:
    expected = json.loads((relay / "health.json").read_text())
    expected["ports"].append(465)
    (relay / "health.json").write_text(json.dumps(expected))
    done = run_health(relay, "--json", FAKE_DOWN="dovecot")
    assert done.returncode == 1
    texts = {(p["section"], p["text"]) for p in json.loads(done.stdout)["problems"]}
    assert texts == {("units", "dovecot is failed"), ("listeners", "nothing listens on port 465")}


def test_without_expectations_the_check_fails_and_says_why(relay: Path) -> None:
    (relay / "health.json").unlink()
    (relay / "health-dns.json").unlink()
    done = run_health(relay, "--json")
    assert done.returncode == 1
    report = json.loads(done.stdout)
    assert [p["section"] for p in report["problems"]] == ["units"]
    assert "cmdeploy run" in report["problems"][0]["text"]
    assert "cmdeploy dns" in report["warnings"][0]["text"]


def test_a_bad_config_is_exit_status_2(tmp_path: Path) -> None:
    (tmp_path / "chatmail.ini").write_text("[params]\nmax_mailbox_size = 500X\n")
    done = subprocess.run(
        [str(SCRIPT), str(tmp_path / "chatmail.ini")], capture_output=True, text=True, check=False
    )
    assert done.returncode == 2 and "error:" in done.stderr


def test_the_push_backlog_counts_waiting_items_not_ones_being_written(tmp_path: Path) -> None:
    from chatmaild.healthcmd import push_backlog

    assert push_backlog(tmp_path) == (0, None)  # no spool yet: nothing was ever queued
    spool = tmp_path / "pending_notifications"
    spool.mkdir()
    (spool / "aa11").write_text("x\n")
    (spool / "bb22").write_text("x\n")
    os.utime(spool / "aa11", (int(NOW) - 3600, int(NOW) - 3600))
    (spool / ".cc33.123.456.tmp").write_text("x\n")
    assert push_backlog(tmp_path) == (2, int(NOW) - 3600)
