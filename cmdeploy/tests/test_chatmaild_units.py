"""The chatmaild systemd units, checked by systemd-analyze."""

from __future__ import annotations

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
]
MAIL_SERVICES = {
    "doveauth",
    "chatmail-lastlogin",
    "chatmail-metadata",
    "filtermail",
    "filtermail-incoming",
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
        local = tmp_path / PurePosixPath(path).name
        local.write_text(content)
        units.append(str(local))
    result = subprocess.run(
        ["systemd-analyze", "verify", *units], capture_output=True, text=True, check=False
    )
    # systemd-analyze also reports on units it pulls in from the host; only ours matter
    ours = [line for line in result.stderr.splitlines() if str(tmp_path) in line]
    assert ours == [], result.stderr
