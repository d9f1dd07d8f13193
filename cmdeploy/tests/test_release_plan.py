"""The deploy's release switch, planned by pyinfra (dry run, no change) against a Debian 13
root (`@chroot` into an overlay of the trixie root) and against this machine when it runs
Debian 12: each host gets its release's Dovecot packages and files, read from its own
/etc/os-release."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from trixie_root import overlay, trixie_root

from cmdeploy import cli
from cmdeploy.release import parse_os_release, release_of
from cmdeploy.run import DEPLOY, build_wheels


def plan(host: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """pyinfra's dry run of the deploy against `host`, with --debug-operations."""
    ini = tmp_path / "chatmail.ini"
    assert cli.main(["init", "chat.example.org", "--config", str(ini), "--force"]) == 0
    env = {
        **os.environ,
        "CHATMAIL_INI": str(ini),
        "CHATMAILD_WHEELS": str(build_wheels(tmp_path / "wheels")),
        "CMDEPLOY_STAGES": "install,configure,activate",
    }
    pyinfra = str(Path(sys.executable).with_name("pyinfra"))
    return subprocess.run(
        [pyinfra, "--yes", "--dry", "--debug-operations", host, str(DEPLOY)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def planned(host: str, tmp_path: Path) -> set[str]:
    """The names of the operations the deploy plans for `host`."""
    result = plan(host, tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return set(re.findall(r"names=\{'([^']*)'\}", result.stdout + result.stderr))


DOVECOT_23 = "Install dovecot-imapd, dovecot-lmtpd, gcc, libc6-dev, dovecot-dev"
DOVECOT_24 = (
    "Install dovecot-imapd, dovecot-lmtpd, dovecot-auth-lua, lua-socket, gcc, libc6-dev, "
    "dovecot-dev"
)


def test_a_debian_13_host_gets_dovecot_24(tmp_path: Path) -> None:
    with overlay(trixie_root()) as root:
        # what a deploy onto Debian 12 left, on a host since upgraded
        (root / "etc/dovecot/auth-dict.conf.ext").write_text("passdb { driver = dict }\n")
        names = planned(f"@chroot/{root}", tmp_path)
    assert DOVECOT_24 in names
    assert "Install /etc/dovecot/auth.lua" in names
    assert "Install /etc/dovecot/auth-dict.conf.ext" not in names
    assert "Remove /etc/dovecot/auth-dict.conf.ext (left for the other Debian release)" in names
    assert "Build the chatmail_notify Dovecot plugin" in names
    assert "Install ca-certificates, openssl, python3-venv, rsync" in names
    # Debian 13 runs Postfix's master in postfix.service, not in postfix@-.service
    assert "Install /etc/systemd/system/postfix.service.d/chatmail-postlog.conf" in names
    assert not any("postfix@.service.d" in name for name in names)


def test_a_debian_12_host_gets_dovecot_23(tmp_path: Path) -> None:
    if release_of(parse_os_release(Path("/etc/os-release").read_text())) != "bookworm":
        pytest.skip("plans against this machine, which is not Debian 12")
    names = planned("@local", tmp_path)
    assert DOVECOT_23 in names
    assert "Install /etc/dovecot/auth-dict.conf.ext" in names
    assert "Install /etc/dovecot/auth.lua" not in names
    assert not any(name.startswith("Remove ") for name in names)
    assert "Install /etc/systemd/system/postfix@.service.d/chatmail-postlog.conf" in names


def test_the_deploy_itself_refuses_another_system(tmp_path: Path) -> None:
    """pyinfra run by hand, past pre-flight: the deploy stops before it plans anything."""
    with overlay(trixie_root()) as root:
        os_release = root / "etc/os-release"
        os_release.unlink()  # a symlink into the shared root's /usr/lib
        os_release.write_text('PRETTY_NAME="Debian GNU/Linux 11 (bullseye)"\nID=debian\n'
                              'VERSION_ID="11"\n')  # fmt: skip
        result = plan(f"@chroot/{root}", tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "the host runs Debian GNU/Linux 11 (bullseye); cmdeploy deploys onto" in output
    assert "Install dovecot" not in output
