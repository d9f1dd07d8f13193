"""The chatmaild systemd units, checked by systemd-analyze."""

from __future__ import annotations

import grp
import pwd
import shutil
import subprocess
from pathlib import Path, PurePosixPath

import pytest

from chatmaild.config import Config
from cmdeploy.chatmaild import chatmaild_files, services
from cmdeploy.layout import Layout

SCRIPTS = [
    "doveauth",
    "lastlogin",
    "chatmail-metadata",
    "filtermail",
    "chatmail-expire",
    "chatmail-postlog",
    "chatmail-metrics",
    "chatmail-health",
]
MAIL_SERVICES = {
    "doveauth",
    "chatmail-lastlogin",
    "chatmail-metadata",
    "filtermail",
    "filtermail-incoming",
    "filtermail-transport",
    "chatmail-metrics",
}


def test_every_mail_service_has_a_unit_running_as_vmail() -> None:
    layout = Layout(Config.from_params({"mail_domain": "chat.example.org"}))
    files = chatmaild_files(layout)
    names = {s.unit for s in services(layout)}
    assert names == MAIL_SERVICES | {"chatmail-postlog"}
    for name in MAIL_SERVICES:
        unit = files[f"/etc/systemd/system/{name}.service"]
        assert "User=vmail" in unit and "Restart=always" in unit
        assert "ExecStart=/usr/local/lib/chatmaild/venv/bin/" in unit
        assert "/usr/local/lib/chatmaild/chatmail.ini" in unit
    # the dict services' sockets live in directories systemd makes for them
    assert "RuntimeDirectory=doveauth" in files["/etc/systemd/system/doveauth.service"]
    timer = files["/etc/systemd/system/chatmail-expire.timer"]
    assert "OnCalendar=*-*-* 00:02:00" in timer


def test_every_service_writes_its_metrics_where_the_exporter_reads_them() -> None:
    layout = Layout(Config.from_params({"mail_domain": "chat.example.org"}))
    files = chatmaild_files(layout)
    for name in MAIL_SERVICES:
        unit = files[f"/etc/systemd/system/{name}.service"]
        assert "--metrics-dir /run/chatmail-metrics" in unit, name
        # writable in spite of ProtectSystem=strict; "-": a missing one does not stop the unit
        assert "ReadWritePaths=/home/vmail/mail/chat.example.org -/run/chatmail-metrics" in unit
    # the directory exists from boot on, writable by the services (all run as vmail)
    tmpfiles = files["/etc/tmpfiles.d/chatmail-metrics.conf"]
    assert "\nd /run/chatmail-metrics 0755 vmail vmail -\n" in tmpfiles
    exporter = files["/etc/systemd/system/chatmail-metrics.service"]
    assert " /run/chatmail-metrics/exporter.socket " in exporter
    assert "--certificate /etc/chatmail/tls/fullchain.pem" in exporter
    # `postqueue -j` works without its setgid bit (NoNewPrivileges) only with the group
    assert "SupplementaryGroups=postdrop\n" in exporter
    assert "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK\n" in exporter
    doveauth = files["/etc/systemd/system/doveauth.service"]
    assert "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6\n" in doveauth


def test_the_log_scrubber_runs_on_a_socket_systemd_holds_as_a_user_of_its_own() -> None:
    files = chatmaild_files(Layout(Config.from_params({"mail_domain": "chat.example.org"})))
    socket_unit = files["/etc/systemd/system/chatmail-postlog.socket"]
    assert "ListenDatagram=/run/chatmail-postlog/dev-log\n" in socket_unit
    assert "SocketMode=0666\n" in socket_unit  # Postfix's daemons run as postfix
    service = files["/etc/systemd/system/chatmail-postlog.service"]
    assert "ExecStart=/usr/local/lib/chatmaild/venv/bin/chatmail-postlog\n" in service
    assert "DynamicUser=yes\n" in service and "\nUser=" not in service
    assert "Requires=chatmail-postlog.socket\n" in service
    assert "RestrictAddressFamilies=AF_UNIX\n" in service
    # enabling the service (as the deploy does) enables the socket too
    assert "Also=chatmail-postlog.socket\n" in service


def test_the_outgoing_gate_runs_on_a_socket_only_postfix_and_it_reach() -> None:
    layout = Layout(Config.from_params({"mail_domain": "chat.example.org"}))
    files = chatmaild_files(layout)
    socket_unit = files["/etc/systemd/system/filtermail.socket"]
    assert f"ListenStream={layout.gate_socket}\n" in socket_unit
    for line in ("SocketUser=vmail", "SocketGroup=postfix", "SocketMode=0660"):
        assert f"\n{line}\n" in socket_unit
    service = files["/etc/systemd/system/filtermail.service"]
    assert "ExecStart=/usr/local/lib/chatmaild/venv/bin/filtermail " in service
    assert " outgoing --metrics-dir " in service and "--socket" not in service
    assert "Requires=filtermail.socket\nAfter=filtermail.socket\n" in service
    assert "Also=filtermail.socket\n" in service
    # the socket's group is enough: filtermail is in none of Postfix's groups
    assert "SupplementaryGroups" not in service and "RuntimeDirectory" not in service


def test_the_daily_health_check_runs_as_vmail_and_fails_its_unit_on_a_problem() -> None:
    layout = Layout(Config.from_params({"mail_domain": "chat.example.org"}))
    files = chatmaild_files(layout)
    service = files["/etc/systemd/system/chatmail-health.service"]
    # a oneshot: chatmail-health's exit status 1 leaves the unit failed for plain monitoring
    assert "Type=oneshot\n" in service and "Restart=" not in service
    assert (
        "ExecStart=/usr/local/lib/chatmaild/venv/bin/chatmail-health"
        " /usr/local/lib/chatmaild/chatmail.ini\n"
    ) in service
    assert "User=vmail\n" in service and "SupplementaryGroups=postdrop\n" in service
    # it writes nothing
    assert "ProtectSystem=strict\n" in service and "ReadWritePaths" not in service
    assert "AF_NETLINK" in service  # ss and ip
    timer = files["/etc/systemd/system/chatmail-health.timer"]
    assert "OnCalendar=*-*-* 06:17:00\n" in timer and "Persistent=true\n" in timer


def test_the_health_expectations_name_every_unit_port_and_the_certificate() -> None:
    import json

    from cmdeploy.remote import expected_units

    layout = Layout(Config.from_params({"mail_domain": "chat.example.org"}))
    expected = json.loads(chatmaild_files(layout)["/etc/chatmail/health.json"])
    assert expected["units"] == expected_units(layout)
    assert "chatmail-health.timer" in expected["units"]
    assert {25, 80, 143, 443, 465, 587, 993, 10081, 10083} <= set(expected["ports"])
    assert expected["certificate"] == "/etc/chatmail/tls/fullchain.pem"
    ipv4 = Layout(Config.from_params({"mail_domain": "192.0.2.10"}))
    expected = json.loads(chatmaild_files(ipv4)["/etc/chatmail/health.json"])
    assert "opendkim" not in expected["units"]
    assert expected["certificate"] == "/etc/ssl/certs/mailserver.pem"


def unit_limit(unit: str) -> int:
    (line,) = [line for line in unit.splitlines() if line.startswith("LimitNOFILE=")]
    return int(line.removeprefix("LimitNOFILE="))


@pytest.mark.parametrize(("smtp", "imap"), [(1000, 10000), (3000, 20000), (10, 50)])
def test_each_service_may_open_a_descriptor_per_connection_it_may_get(smtp: int, imap: int) -> None:
    config = Config.from_params(
        {
            "mail_domain": "chat.example.org",
            "max_smtp_connections": str(smtp),
            "max_imap_connections": str(imap),
        }
    )
    files = chatmaild_files(Layout(config))

    def limit(name: str) -> int:
        return unit_limit(files[f"/etc/systemd/system/{name}.service"])

    # submission and smtps: `smtp` sessions each, each with a filtermail connection and, while
    # it hands the message on, filtermail's re-injection connection
    assert limit("filtermail") >= 2 * 2 * smtp + 1024
    # one connection per imap process to each dict service, and LMTP's to metadata
    assert limit("chatmail-lastlogin") >= imap + 1024
    assert limit("chatmail-metadata") >= imap + 100 + 1024
    # port 25 (Postfix's default_process_limit) and /mxdeliv, each re-injected
    assert limit("filtermail-incoming") >= 2 * 100 + 1024
    # two connections per Dovecot auth worker (default_process_limit)
    assert limit("doveauth") >= 2 * 100 + 1024
    # one socket in, one out: systemd's default is plenty
    assert "LimitNOFILE" not in files["/etc/systemd/system/chatmail-postlog.service"]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd")
def test_systemd_analyze_verifies_the_units(tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    (lib / "venv" / "bin").mkdir(parents=True)
    for script in SCRIPTS:
        exe = lib / "venv" / "bin" / script
        exe.write_text("#!/bin/sh\n")
        exe.chmod(0o755)
    layout = Layout(
        Config.from_params({"mail_domain": "chat.example.org", "mailboxes_dir": str(tmp_path)}),
        lib_dir=PurePosixPath(lib),
    )
    units = []
    for path, content in chatmaild_files(layout).items():
        if not path.startswith("/etc/systemd/system/"):
            continue
        local = tmp_path / PurePosixPath(path).name
        local.write_text(content)
        units.append(str(local))
    result = subprocess.run(
        ["systemd-analyze", "verify", *units], capture_output=True, text=True, check=False
    )
    # systemd-analyze also reports on units it pulls in from the host; only ours matter
    ours = [line for line in result.stderr.splitlines() if str(tmp_path) in line]
    assert ours == [], result.stderr


@pytest.mark.skipif(shutil.which("systemd-tmpfiles") is None, reason="needs systemd-tmpfiles")
def test_systemd_tmpfiles_creates_the_metrics_directory_for_vmail(tmp_path: Path) -> None:
    layout = Layout(Config.from_params({"mail_domain": "chat.example.org"}))
    conf = tmp_path / "chatmail-metrics.conf"
    conf.write_text(chatmaild_files(layout)["/etc/tmpfiles.d/chatmail-metrics.conf"])
    root = tmp_path / "root"
    (root / "run").mkdir(parents=True)
    (root / "etc").mkdir()
    for name in ("passwd", "group"):  # it resolves vmail inside --root
        shutil.copy(f"/etc/{name}", root / "etc" / name)
    subprocess.run(["systemd-tmpfiles", "--create", f"--root={root}", str(conf)], check=True)
    made = (root / "run" / "chatmail-metrics").stat()
    assert made.st_mode & 0o7777 == 0o755
    assert (pwd.getpwuid(made.st_uid).pw_name, grp.getgrgid(made.st_gid).gr_name) == (
        "vmail",
        "vmail",
    )
