"""The relay's Dovecot configuration, checked by Debian's own doveconf: Debian 12's Dovecot 2.3
on this machine, and Debian 13's Dovecot 2.4 in a trixie root (`trixie_root.py`)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath

import pytest
from trixie_root import chroot, trixie_root

from chatmaild.config import Config
from chatmaild.tokens import METADATA_FILE
from cmdeploy.chatmaild import chatmaild_files
from cmdeploy.dovecot import (
    BOOKWORM,
    TRIXIE,
    dovecot_files,
    dovecot_unit_files,
    plugin,
    stale_files,
)
from cmdeploy.dovecot import packages as dovecot_packages
from cmdeploy.layout import Layout

needs_doveconf = pytest.mark.skipif(
    shutil.which("doveconf") is None and not os.environ.get("CI"), reason="needs dovecot-core"
)

CONFIGS = {
    "acme": {"mail_domain": "chat.example.org"},
    "self": {"mail_domain": "_chat.example.org", "imap_compress": "true"},
    "ipv4": {"mail_domain": "192.0.2.10", "disable_ipv6": "true", "imap_rawlog": "true"},
    "external": {
        "mail_domain": "chat.example.org",
        "tls_external_cert_and_key": "/srv/tls/cert.pem /srv/tls/key.pem",
        "max_mailbox_size": "2G",
        "privacy_mail": "privacy@example.org",
    },
}


def render(tmp_path: Path, params: dict[str, str]) -> Path:
    """Write the files under tmp_path, TLS files included, and return dovecot.conf."""
    config = Config.from_params(params)
    tls_dir = tmp_path / "tls"
    tls_dir.mkdir()
    layout = Layout(config)
    for path in (layout.tls.cert, layout.tls.key):
        local = tmp_path / str(path).lstrip("/")
        local.parent.mkdir(parents=True, exist_ok=True)
        local.write_text("dummy\n")
    conf_dir = PurePosixPath(tmp_path)
    for name, content in dovecot_files(layout, conf_dir).items():
        # the TLS paths point into the relay's filesystem; redirect them into tmp_path
        for path in (layout.tls.cert, layout.tls.key):
            content = content.replace(f"<{path}", f"<{tmp_path}{path}")
        Path(name).write_text(content)
    return tmp_path / "dovecot.conf"


def doveconf(conf: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["doveconf", "-c", str(conf), *args], capture_output=True, text=True, check=False
    )


@needs_doveconf
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_doveconf_accepts_the_configuration(tmp_path: Path, name: str) -> None:
    conf = render(tmp_path, CONFIGS[name])
    result = doveconf(conf, "-n")
    assert result.returncode == 0, result.stderr
    assert result.stderr == "", result.stderr  # no warnings either


def value(conf: Path, setting: str) -> str:
    result = doveconf(conf, "-h", setting)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


@needs_doveconf
def test_settings_a_client_relies_on(tmp_path: Path) -> None:
    conf = render(tmp_path, CONFIGS["acme"])
    assert value(conf, "imap_capability") == "+XDELTAPUSH XCHATMAIL APPENDLIMIT=31457280"
    assert value(conf, "ssl") == "required"
    assert value(conf, "ssl_min_protocol") == "TLSv1.3"
    assert value(conf, "protocols") == "imap lmtp"
    assert value(conf, "listen") == "*, ::"
    assert value(conf, "imap_hibernate_timeout") == "30 secs"
    assert "%u" not in value(conf, "mail_log_prefix")  # no account names in the log
    assert "%r" not in value(conf, "login_log_format_elements")  # nor client addresses


@needs_doveconf
def test_settings_follow_the_config(tmp_path: Path) -> None:
    conf = render(tmp_path, CONFIGS["external"])
    plugin = doveconf(conf, "-n", "plugin").stdout
    assert "quota_rule = *:storage=2048M" in plugin
    assert "quota-warning 1433.6 %h" in plugin  # 70 % of 2048 MiB
    assert value(conf, "mail_server_admin") == "mailto:privacy@example.org"


@needs_doveconf
@pytest.mark.parametrize(
    ("name", "setting", "expected"),
    [
        ("ipv4", "listen", "*"),  # disable_ipv6
        ("self", "imap_hibernate_timeout", "0"),  # COMPRESS turns hibernation off
    ],
)
def test_options(tmp_path: Path, name: str, setting: str, expected: str) -> None:
    assert value(render(tmp_path, CONFIGS[name]), setting) == expected


def test_systemd_starts_dovecot_again_when_it_dies() -> None:
    drop_in = dovecot_unit_files()["/etc/systemd/system/dovecot.service.d/chatmail-restart.conf"]
    assert "[Service]\nRestart=on-failure\nRestartSec=5\n" in drop_in
    assert "[Unit]\nStartLimitIntervalSec=0\n" in drop_in


@needs_doveconf
def test_dovecot_logs_into_the_scrubber_socket(tmp_path: Path) -> None:
    drop_in = dovecot_unit_files()["/etc/systemd/system/dovecot.service.d/chatmail-postlog.conf"]
    assert "BindPaths=/run/chatmail-postlog/dev-log:/run/systemd/journal/dev-log\n" in drop_in
    assert "Requires=chatmail-postlog.socket\n" in drop_in
    # the bind reaches Dovecot's lines only while its log process writes them to syslog(3)
    assert value(render(tmp_path, CONFIGS["acme"]), "log_path") == "syslog"


DEBIAN_DOVECOT_UNIT = Path("/lib/systemd/system/dovecot.service")


@pytest.mark.skipif(
    shutil.which("systemd-analyze") is None or not DEBIAN_DOVECOT_UNIT.exists(),
    reason="needs systemd and Debian's dovecot-core",
)
def test_systemd_analyze_verifies_dovecot_with_the_drop_in(tmp_path: Path) -> None:
    shutil.copy(DEBIAN_DOVECOT_UNIT, tmp_path)
    for path, text in dovecot_unit_files().items():
        drop_in = tmp_path / "dovecot.service.d" / Path(path).name
        drop_in.parent.mkdir(exist_ok=True)
        drop_in.write_text(text)
    # the log socket's units, which the drop-in requires
    layout = Layout(Config.from_params({"mail_domain": "chat.example.org"}))
    for path, text in chatmaild_files(layout).items():
        if "chatmail-postlog" in path:
            (tmp_path / PurePosixPath(path).name).write_text(text)
    result = subprocess.run(
        ["systemd-analyze", "verify", str(tmp_path / "dovecot.service")],
        capture_output=True,
        text=True,
        check=False,
    )
    ours = [line for line in result.stderr.splitlines() if str(tmp_path) in line]
    assert ours == [], result.stderr


# Debian 13: Dovecot 2.4 from the trixie root, with the same inputs.


@pytest.fixture(scope="module")
def trixie() -> Path:
    return trixie_root()


@pytest.fixture
def render24(trixie: Path) -> Iterator[Callable[[dict[str, str]], PurePosixPath]]:
    """Writes the 2.4 files into a fresh directory of the root; returns dovecot.conf's path
    inside. The directories go again after the test."""
    written: list[Path] = []

    def write(params: dict[str, str]) -> PurePosixPath:
        layout = Layout(Config.from_params(params))
        (trixie / "tmp").mkdir(exist_ok=True)
        written.append(Path(tempfile.mkdtemp(prefix="chatmail-doveconf-", dir=trixie / "tmp")))
        conf_dir = PurePosixPath("/tmp") / written[-1].name
        for name, content in dovecot_files(layout, conf_dir, TRIXIE).items():
            (trixie / name.lstrip("/")).write_text(content)
        return conf_dir / "dovecot.conf"

    yield write
    for path in written:
        shutil.rmtree(path)


def doveconf24(root: Path, conf: PurePosixPath, *args: str) -> str:
    result = chroot(root, ["doveconf", "-c", str(conf), *args])
    assert result.returncode == 0, result.stderr
    assert result.stderr == "", result.stderr  # no warnings either
    return result.stdout


Render24 = Callable[[dict[str, str]], PurePosixPath]


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_dovecot24_accepts_the_configuration(trixie: Path, render24: Render24, name: str) -> None:
    doveconf24(trixie, render24(CONFIGS[name]), "-n")


def test_dovecot24_settings_a_client_relies_on(trixie: Path, render24: Render24) -> None:
    conf = render24(CONFIGS["acme"])
    capability = doveconf24(trixie, conf, "-h", "imap_capability").splitlines()
    # added to 2.4's defaults; COMPRESS is one of them, off while hibernation is on
    assert capability == [
        "XDELTAPUSH = yes",
        "XCHATMAIL = yes",
        '"APPENDLIMIT=31457280" = yes',
        '"COMPRESS=DEFLATE" = no',
    ]
    settings = doveconf24(trixie, conf, "-n")
    assert "ssl = required\n" in settings
    assert "ssl_min_protocol = TLSv1.3\n" in settings
    assert "imap_hibernate_timeout = 30s\n" in settings
    assert "listen = * ::\n" in settings
    assert "%{user}" not in doveconf24(trixie, conf, "-h", "mail_log_prefix")
    assert "remote_ip" not in doveconf24(trixie, conf, "-h", "login_log_format_elements")
    assert "passdb lua {" in settings and "userdb lua {" in settings
    assert "name = metadata\n" in settings  # the dicts of METADATA and last login
    assert "name = lastlogin\n" in settings
    assert "chatmail_notify = yes\n" in settings
    # its lines reach chatmail-postlog only through syslog(3), as on 2.3
    assert doveconf24(trixie, conf, "-h", "log_path").strip() == "syslog"


def test_dovecot24_settings_follow_the_config(trixie: Path, render24: Render24) -> None:
    settings = doveconf24(trixie, render24(CONFIGS["external"]), "-n")
    assert "storage_size = 2048M\n" in settings
    assert "args = 1433.6 %{home}\n" in settings  # 70 % of 2048 MiB
    assert "mail_server_admin = mailto:privacy@example.org\n" in settings


def test_dovecot24_compress_turns_hibernation_off(trixie: Path, render24: Render24) -> None:
    settings = doveconf24(trixie, render24(CONFIGS["self"]), "-n")
    assert "imap_hibernate_timeout" not in settings
    assert "COMPRESS" not in settings  # 2.4's default: offered


# The release switch: each release its packages and its auth file, the other's removed.


def test_each_release_has_its_auth_file_and_packages() -> None:
    layout = Layout(Config.from_params(CONFIGS["acme"]))
    assert "/etc/dovecot/auth-dict.conf.ext" in dovecot_files(layout, release=BOOKWORM)
    assert "/etc/dovecot/auth.lua" not in dovecot_files(layout, release=BOOKWORM)
    assert "/etc/dovecot/auth.lua" in dovecot_files(layout, release=TRIXIE)
    assert "/etc/dovecot/auth-dict.conf.ext" not in dovecot_files(layout, release=TRIXIE)
    # and on either, the push hook's Lua script of earlier deploys
    assert stale_files(TRIXIE) == [
        "/etc/dovecot/auth-dict.conf.ext",
        "/etc/dovecot/push_notification.lua",
    ]
    assert stale_files(BOOKWORM) == ["/etc/dovecot/auth.lua", "/etc/dovecot/push_notification.lua"]
    lua = {"dovecot-auth-lua", "lua-socket"}
    assert not lua & set(dovecot_packages(BOOKWORM))
    assert lua <= set(dovecot_packages(TRIXIE))
    with pytest.raises(ValueError):
        dovecot_packages("forky")


def test_the_push_hook_is_chatmail_notifys_and_looks_for_chatmaild_token_file(
    tmp_path: Path,
) -> None:
    """LMTP loads the relay's own plugin for pushes, not Dovecot's Lua push driver (which has
    Dovecot extract headers and a body snippet of every message, doc/performance.md), and the
    plugin looks for the file chatmail-metadata keeps device tokens in."""
    for release in (BOOKWORM, TRIXIE):
        conf = dovecot_files(Layout(Config.from_params(CONFIGS["acme"])), release=release)
        text = conf["/etc/dovecot/chatmail.conf"]
        lmtp = text[text.index("protocol lmtp {") :]
        lmtp = lmtp[: lmtp.index("\n}\n")]
        assert "chatmail_notify" in lmtp, release
        assert "push_notification" not in text and "mail_lua" not in text, release
    assert f'#define TOKENS_FILE "{METADATA_FILE}"' in plugin.source()


def test_debian_13_has_every_dovecot_package(trixie: Path) -> None:
    """The names exist in Debian 13 (the root installs them from its archive)."""
    result = chroot(trixie, ["dpkg-query", "-W", "-f", "${Status}\\n", *dovecot_packages(TRIXIE)])
    assert result.returncode == 0, result.stderr
    assert set(result.stdout.splitlines()) == {"install ok installed"}
