"""The relay's Postfix, nginx, OpenDKIM and unbound files on Debian 13, checked by Debian 13's
own binaries from the trixie root (`trixie_root.py`), as the deploy validates them there.

Each case gets an overlay of the root: the deploy's files land at their real paths beside
Debian 13's own (its nginx.conf with the deploy's one-line edit, its unbound.conf and
postfix directory), and each check is the deploy's own command, run by chroot. Dovecot 2.4's
files are checked in test_dovecot_conf.py and test_dovecot24.py. Last, chatmaild's venv on
Debian 13's Python 3.13, the units ours rely on, and certbot 4.0 with the deploy's request.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

import pytest
from trixie_root import chroot, install, overlay, trixie_root

from chatmaild.config import Config
from cmdeploy.acme import acme_files, certbot_command
from cmdeploy.chatmaild import UNIT_DIR, chatmaild_files
from cmdeploy.layout import Layout
from cmdeploy.nginx import Sockets, nginx_files
from cmdeploy.opendkim import genkey_command, opendkim_files
from cmdeploy.postfix import postfix_files
from cmdeploy.postfix import stale_files as postfix_stale_files
from cmdeploy.release import TRIXIE
from cmdeploy.run import build_wheels
from cmdeploy.unbound import unbound_files

CASES = {
    "acme": {"mail_domain": "chat.example.org"},
    "self": {"mail_domain": "_chat.example.org"},
    "ipv4": {"mail_domain": "192.0.2.10"},
    "external": {
        "mail_domain": "chat.example.org",
        "tls_external_cert_and_key": "/etc/x/cert.pem /etc/x/key.pem",
    },
    "no-ipv6": {
        "mail_domain": "chat.example.org",
        "disable_ipv6": "true",
        "dns_forwarders": "192.0.2.53 2001:db8::53",
    },
}

# deploy.py's checks before a restart, word for word
POSTFIX_CHECK = 'test -z "$(postconf -n 2>&1 >/dev/null)"'
UNBOUND_CHECK = "/usr/libexec/unbound-helper root_trust_anchor_update && unbound-checkconf"
NGINX_CHECK = "nginx -t -q"
OPENDKIM_CHECK = "opendkim -n"
# the line deploy.py edits in Debian's nginx.conf (its files.line)
WORKER_LINE = re.compile(r"^[ \t]*worker_connections[ \t]+[0-9]+;", re.M)


@pytest.fixture(scope="module")
def trixie() -> Path:
    return trixie_root()


@pytest.fixture(params=sorted(CASES))
def relay(request: pytest.FixtureRequest, trixie: Path) -> Iterator[tuple[Path, Layout]]:
    """An overlay of the root with every file of these components installed as the deploy
    installs them; the TLS certificate and DKIM key made as the deploy makes them."""
    layout = Layout(Config.from_params(CASES[request.param]))
    with overlay(trixie) as root:
        install(root, postfix_files(layout, release=TRIXIE))
        install(root, nginx_files(layout))
        install(root, opendkim_files(layout))
        install(root, unbound_files(layout))
        nginx_conf = root / "etc/nginx/nginx.conf"
        text, count = WORKER_LINE.subn("\tworker_connections 2048;", nginx_conf.read_text())
        assert count == 1  # Debian 13's nginx.conf still has the line the deploy edits
        nginx_conf.write_text(text)
        tls = layout.tls
        for path in (tls.cert.parent, tls.key.parent, layout.dkim_key.parent):
            (root / path.relative_to("/")).mkdir(parents=True, exist_ok=True)
        made = chroot(root, [
            *("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"),
            *("-nodes", "-days", "2", "-subj", "/CN=test"),
            *("-keyout", str(tls.key), "-out", str(tls.cert)),
        ])  # fmt: skip
        assert made.returncode == 0, made.stderr
        made = chroot(root, genkey_command(layout))
        assert made.returncode == 0, made.stderr
        yield root, layout


def sh(root: Path, command: str) -> subprocess.CompletedProcess[str]:
    return chroot(root, ["sh", "-c", command])


def test_postconf_accepts_main_cf_without_warnings(relay: tuple[Path, Layout]) -> None:
    root, _ = relay
    result = chroot(root, ["postconf", "-n"])
    assert result.returncode == 0 and result.stderr == "", result.stderr
    assert sh(root, POSTFIX_CHECK).returncode == 0
    # master.cf too, whose services' -o parameters postconf checks with -M
    result = chroot(root, ["postconf", "-M"])
    assert result.returncode == 0 and result.stderr == "", result.stderr
    # what Debian 13's postfix.service runs before each start (ExecStartPre)
    result = chroot(root, ["postfix", "check"])
    assert result.returncode == 0, result.stdout + result.stderr
    assert not re.search(r"warning|fatal", result.stdout + result.stderr), result.stdout


def test_postfix_daemons_accept_the_global_parameters(relay: tuple[Path, Layout]) -> None:
    """`postmap` reads main.cf as every daemon does at start: fatal for a refused value."""
    root, _ = relay
    result = chroot(root, ["postmap", "-q", "x", "regexp:/etc/postfix/login_map"])
    assert result.returncode in (0, 1) and result.stderr == "", result.stderr


def test_nginx_accepts_our_files_beside_debians(relay: tuple[Path, Layout]) -> None:
    root, _ = relay
    result = chroot(root, ["nginx", "-t"])
    assert result.returncode == 0, result.stderr
    assert "[warn]" not in result.stderr and "[emerg]" not in result.stderr, result.stderr
    assert sh(root, NGINX_CHECK).returncode == 0


def test_opendkim_accepts_its_config(relay: tuple[Path, Layout]) -> None:
    root, _ = relay
    result = sh(root, OPENDKIM_CHECK)
    assert result.returncode == 0 and result.stderr == "", result.stderr


def test_unbound_checkconf_accepts_our_file_beside_debians(relay: tuple[Path, Layout]) -> None:
    root, _ = relay
    result = sh(root, UNBOUND_CHECK)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no errors" in result.stdout


def test_chatmaild_venv_on_python_313(trixie: Path, tmp_path: Path) -> None:
    """The deploy's venv, made by Debian 13's python3 (3.13) from the wheels `cmdeploy run`
    builds, with the deploy's own commands; every console script then imports its module."""
    wheels = build_wheels(tmp_path / "wheels")
    with overlay(trixie) as root:
        shutil.copytree(wheels, root / "wheels")
        chatmaild_wheel = next(w.name for w in wheels.glob("chatmaild-*.whl"))
        venv = Layout(Config.from_params(CASES["acme"])).venv
        made = sh(
            root,
            f"python3 -m venv {venv} && {venv}/bin/pip install --quiet --no-index"
            f" --find-links /wheels --force-reinstall /wheels/{chatmaild_wheel}",
        )
        assert made.returncode == 0, made.stderr
        version = chroot(root, [f"{venv}/bin/python", "--version"])
        assert version.stdout.startswith("Python 3.13"), version.stdout
        scripts = chroot(root, [f"{venv}/bin/python", "-c", IMPORT_SCRIPTS])
        assert scripts.returncode == 0, scripts.stderr
        assert int(scripts.stdout) >= 10  # the services, the expiry, the health check, ...


# imports the module of every console script chatmaild installs, as its first start would
IMPORT_SCRIPTS = """\
from importlib.metadata import entry_points
found = [e for e in entry_points(group="console_scripts") if e.value.startswith("chatmaild.")]
for e in found:
    e.load()
print(len(found))
"""


def test_postfix_drop_ins_sit_on_the_unit_that_runs_the_master(trixie: Path) -> None:
    """Debian 13 runs the main instance's master in postfix.service; its postfix@.service
    is for extra instances only (/etc/postfix-NAME). Our drop-ins must sit on the former."""
    units = trixie / "usr/lib/systemd/system"
    main = (units / "postfix.service").read_text()
    assert "Environment=MAIL_CONFIG=/etc/postfix\n" in main
    assert "ExecStart=postfix debian-systemd-start\n" in main
    template = (units / "postfix@.service").read_text()
    assert "AssertPathExists=/etc/postfix-%I/main.cf\n" in template
    layout = Layout(Config.from_params(CASES["acme"]))
    drop_ins = [p for p in postfix_files(layout, release=TRIXIE) if p.startswith(UNIT_DIR)]
    assert sorted(drop_ins) == [
        f"{UNIT_DIR}/postfix.service.d/chatmail-postlog.conf",
        f"{UNIT_DIR}/postfix.service.d/chatmail-restart.conf",
    ]
    assert postfix_stale_files(TRIXIE) == [
        f"{UNIT_DIR}/postfix@.service.d/chatmail-postlog.conf",
        f"{UNIT_DIR}/postfix@.service.d/chatmail-restart.conf",
    ]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd")
def test_systemd_analyze_verifies_debian_13s_postfix_unit_with_our_drop_ins(
    trixie: Path, tmp_path: Path
) -> None:
    lib = tmp_path / "lib"
    (lib / "venv" / "bin").mkdir(parents=True)
    script = lib / "venv" / "bin" / "chatmail-postlog"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    layout = Layout(Config.from_params(CASES["acme"]), lib_dir=PurePosixPath(lib))
    units = tmp_path / "systemd"
    files = postfix_files(
        layout,
        config_dir=PurePosixPath(tmp_path),
        unit_dir=PurePosixPath(units),
        release=TRIXIE,
    )
    files |= {
        str(units / PurePosixPath(path).name): text
        for path, text in chatmaild_files(layout).items()
        if "chatmail-postlog" in path
    }
    for name, text in files.items():
        Path(name).parent.mkdir(parents=True, exist_ok=True)
        Path(name).write_text(text, encoding="utf-8")
    shutil.copy(trixie / "usr/lib/systemd/system/postfix.service", units)
    result = subprocess.run(
        ["systemd-analyze", "verify", str(units / "postfix.service")],
        capture_output=True,
        text=True,
        check=False,
    )
    ours = [line for line in result.stderr.splitlines() if str(tmp_path) in line]
    assert ours == [], result.stderr


def test_fcgiwrap_listens_where_nginx_passes_new(trixie: Path) -> None:
    unit = (trixie / "usr/lib/systemd/system/fcgiwrap.socket").read_text()
    assert f"ListenStream={Sockets().fcgiwrap}\n" in unit


def test_certbot_4_takes_the_deploys_command_line(trixie: Path) -> None:
    """certbot 4.0 parses every option of the deploy's request, then fails to reach the CA:
    there is no network in its namespace (an unknown option would end in a usage error)."""
    layout = Layout(Config.from_params({**CASES["acme"], "acme_email": "ops@example.org"}))
    argv = certbot_command(layout)
    with overlay(trixie) as root:
        # what the deploy puts in place before it asks: the webroot and the deploy hook
        (root / layout.acme_webroot.relative_to("/")).mkdir(parents=True)
        for path, (text, mode) in acme_files(layout).items():
            install(root, {path: text})
            (root / path.lstrip("/")).chmod(int(mode, 8))
        result = subprocess.run(
            ["unshare", "--net", "chroot", str(root), *argv],
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "usage" not in output.lower() and "unrecognized" not in output, output
    assert "connection" in output.lower(), output
