"""A relay's Dovecot 2.4 and chatmaild services, run from the Debian 13 root (`trixie_root`).

The counterpart of chatmaild/tests/dovecot_harness.py for Debian 13: Dovecot 2.4 from the
root, configured with the deploy's 2.4 files (`cmdeploy.dovecot`, release trixie) plus a small
test environment (its own base_dir and log, plaintext IMAP on a free loopback port, LMTP on
a unix socket), and doveauth, lastlogin and chatmail-metadata from this checkout, run by the
root's Python 3.13. Everything runs by `chroot` in one directory of the root, so the paths in
the configuration are the paths the services see; the tests reach them on the host below the
root (`Relay24.host`). The chroot shares this machine's network: the tests connect to
127.0.0.1 as to any local daemon.
"""

from __future__ import annotations

import contextlib
import functools
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from free_ports import free_port
from trixie_root import chroot

# chatmaild's Dovecot 2.3 harness and push fake: their helpers serve here too
sys.path.append(str(Path(__file__).resolve().parents[2] / "chatmaild" / "tests"))
from dovecot_harness import (
    can_connect_tcp,
    can_connect_unix,
    service_command,
    stop_process,
    wait_for,
)
from fakepush import FakePushServer, running_fake_push

import chatmaild
from chatmaild.config import read_config
from cmdeploy.dovecot import TRIXIE, chatmail_conf, dovecot_files, plugin
from cmdeploy.layout import Layout

TEST_ENVIRONMENT = """\
# Private test instance of Dovecot 2.4, written by cmdeploy/tests/dovecot24_harness.py.
dovecot_config_version = 2.4.0
dovecot_storage_version = 2.4.0
base_dir = {base}/run
state_dir = {base}/state
instance_name = chatmail-test24-{port}
log_path = {base}/dovecot.log
# Debian's plugins and chatmail_notify, built for this instance
mail_plugin_dir = {base}/modules
protocols = imap lmtp
listen = 127.0.0.1
ssl = no
# Only this loopback test instance accepts plaintext logins without TLS.
auth_allow_cleartext = yes
auth_failure_delay = 0
first_valid_uid = 1

service imap-login {{
  inet_listener imap {{
    listen = 127.0.0.1
    port = {port}
  }}
  restart_request_count = unlimited
  process_min_avail = 2
}}
service lmtp {{
  unix_listener {base}/lmtp.socket {{
    mode = 0666
  }}
}}
!include {base}/chatmail.conf
"""

SERVICES = {
    # name: (module, extra arguments)
    "doveauth": ("doveauth", ["--nocreate-file", "{nocreate}"]),
    "lastlogin": ("lastlogin", []),
    "metadata": ("metadata", []),
}


@dataclass
class Relay24:
    """Paths are inside the root (what the services see); `host()` finds them from here."""

    root: Path
    base: PurePosixPath
    imap_port: int
    vmail: tuple[int, int]
    push: FakePushServer
    # the running processes: the services by name, and "dovecot"
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    # lines of Dovecot's log that a test caused on purpose, e.g. while a service was away
    expected_log_lines: list[str] = field(default_factory=list)

    def host(self, path: PurePosixPath | str) -> Path:
        return self.root / str(path).lstrip("/")

    @property
    def mailboxes(self) -> Path:
        return self.host(self.base / "mailboxes")

    @property
    def nocreate_file(self) -> Path:
        return self.host(self.base / "nocreate")

    @property
    def lmtp_socket(self) -> Path:
        return self.host(self.base / "lmtp.socket")

    @property
    def ini(self) -> Path:
        return self.host(self.base / "chatmail.ini")

    def socket(self, name: str) -> PurePosixPath:
        return self.base / "sockets" / f"{name}.socket"

    def doveadm(self, *args: str) -> subprocess.CompletedProcess[str]:
        return chroot(self.root, ["doveadm", "-c", str(self.base / "dovecot.conf"), *args])

    def dovecot_log(self) -> str:
        path = self.host(self.base / "dovecot.log")
        return path.read_text(errors="replace") if path.exists() else ""

    def service_log(self, name: str) -> str:
        return self.host(self.base / f"{name}.log").read_text(errors="replace")

    def stop_service(self, name: str) -> None:
        """SIGTERM, as systemd stops it; it must end by itself, open connections or not."""
        assert stop_process(self.procs.pop(name)), f"{name} ignored SIGTERM"

    def start_service(self, name: str) -> None:
        """Start a service of `SERVICES` (again); returns once its socket answers."""
        module, extra = SERVICES[name]
        argv = [
            *service_command(self.base, module),
            str(self.socket(name)),
            str(self.base / "chatmail.ini"),
            *(arg.format(nocreate=self.base / "nocreate") for arg in extra),
        ]
        uid, gid = self.vmail
        chroot_argv = ["chroot", f"--userspec={uid}:{gid}", f"--groups={gid}", str(self.root)]
        with self.host(self.base / f"{name}.log").open("ab") as log:
            self.procs[name] = subprocess.Popen(
                [*chroot_argv, *argv], stdout=log, stderr=subprocess.STDOUT
            )
        path = self.host(self.socket(name))
        wait_for(functools.partial(can_connect_unix, path), what=name)


def _vmail_ids(root: Path) -> tuple[int, int]:
    """The root's vmail user (scripts/trixie-root creates it): its ids differ from the host's."""
    for line in (root / "etc" / "passwd").read_text().splitlines():
        fields = line.split(":")
        if fields[0] == "vmail":
            return int(fields[2]), int(fields[3])
    raise RuntimeError(f"no vmail user in {root}")


def _build_plugins(relay: Relay24) -> None:
    """`base/modules`: Debian's plugins and chatmail_notify, compiled by the root's gcc
    against its dovecot-dev exactly as the deploy compiles it on a relay."""
    modules = relay.base / "modules"
    relay.host(modules).mkdir()
    for module in relay.host(plugin.MODULE_DIR).iterdir():
        (relay.host(modules) / module.name).symlink_to(plugin.MODULE_DIR / module.name)
    source = relay.base / plugin.SOURCE
    relay.host(source).write_text(plugin.source())
    built = chroot(relay.root, plugin.build_command(str(source), str(modules / plugin.MODULE)))
    assert built.returncode == 0, built.stderr
    # no warnings either: the plugin builds cleanly against 2.4's headers
    assert built.stderr == "", built.stderr


def _write_config(relay: Relay24) -> None:
    base = relay.base
    layout = Layout(
        read_config(relay.ini),
        doveauth_socket=relay.socket("doveauth"),
        lastlogin_socket=relay.socket("lastlogin"),
        metadata_socket=relay.socket("metadata"),
    )
    quota_expire = base / "chatmail-quota-expire"
    argv = " ".join(shlex.quote(arg) for arg in service_command(base, "quota_expire"))
    relay.host(quota_expire).write_text(f'#!/bin/sh\nexec {argv} "$@"\n')
    relay.host(quota_expire).chmod(0o755)
    files = dovecot_files(layout, base, TRIXIE)
    files[str(base / "chatmail.conf")] = chatmail_conf(
        layout, base, TRIXIE, quota_expire=quota_expire
    )
    for name in ("chatmail.conf", "auth.lua"):
        relay.host(base / name).write_text(files[str(base / name)])
    relay.host(base / "dovecot.conf").write_text(
        TEST_ENVIRONMENT.format(base=base, port=relay.imap_port)
    )


@contextlib.contextmanager
def running_relay24(root: Path, extra_params: str = "") -> Iterator[Relay24]:
    """Start the services and Dovecot 2.4 in `root`; `extra_params` go into chatmail.ini,
    where `{base}` stands for the instance's directory inside the root."""
    (root / "tmp").mkdir(exist_ok=True)
    host_base = Path(tempfile.mkdtemp(prefix="chatmail-dovecot24-", dir=root / "tmp"))
    host_base.chmod(0o755)
    relay: Relay24 | None = None
    try:
        with running_fake_push() as push:
            relay = Relay24(
                root=root,
                base=PurePosixPath("/tmp") / host_base.name,
                imap_port=free_port(),
                vmail=_vmail_ids(root),
                push=push,
            )
            _prepare(relay, extra_params)
            for name in SERVICES:
                relay.start_service(name)
            conf = str(relay.base / "dovecot.conf")
            relay.procs["dovecot"] = subprocess.Popen(
                ["chroot", str(root), "dovecot", "-F", "-c", conf]
            )
            port = relay.imap_port
            wait_for(lambda: can_connect_tcp(port), what="Dovecot 2.4's IMAP port")
            yield relay
    finally:
        # Dovecot first: it would log the services' absence as errors
        for proc in reversed(list(relay.procs.values()) if relay else []):
            stop_process(proc)
        shutil.rmtree(host_base, ignore_errors=True)


def _prepare(relay: Relay24, extra_params: str) -> None:
    """chatmail.ini, the directories vmail writes, chatmaild's code, plugins, configuration."""
    for name in ("mailboxes", "sockets"):
        relay.host(relay.base / name).mkdir()
        shutil.chown(relay.host(relay.base / name), *relay.vmail)
    turn_secret = relay.base / "turn-secret"
    relay.host(turn_secret).write_text("test-turn-secret\n")
    relay.host(turn_secret).chmod(0o644)
    relay.ini.write_text(
        "[params]\nmail_domain = example.org\n"
        f"mailboxes_dir = {relay.base / 'mailboxes'}\n"
        f"push_endpoint = {relay.push.url}\n"
        f"turn_secret_file = {turn_secret}\n"
        "privacy_mail = privacy@example.org\n"
        # the test machine may be busy or small; the resource gate has its unit tests
        "max_load_1m = 1000\nmin_available_memory = 0\nmin_free_disk_space = 0\n"
        + extra_params.format(base=relay.base)
    )
    relay.ini.chmod(0o644)
    shutil.copytree(Path(chatmaild.__file__).parent, relay.host(relay.base / "lib/chatmaild"))
    _build_plugins(relay)
    _write_config(relay)
