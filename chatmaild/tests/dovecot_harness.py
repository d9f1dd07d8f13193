"""A private instance of Debian's Dovecot for component tests and the auth benchmark.

It has its own base_dir, config and log in a temporary directory, listens for plaintext IMAP
on a high loopback port (plaintext auth is allowed only here) and for LMTP on a unix socket,
and includes the chatmail fragment that cmdeploy installs on a relay
(`cmdeploy/src/cmdeploy/dovecot/`), so it asks doveauth, lastlogin and chatmail-metadata over
their unix sockets exactly as a relay's Dovecot does. Push notifications go to a local fake.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shlex
import shutil
import signal
import smtplib
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from fakepush import FakePushServer, running_fake_push

import chatmaild
from chatmaild.config import read_config
from cmdeploy.dovecot import chatmail_conf, dovecot_files, plugin
from cmdeploy.layout import Layout

TEST_ENVIRONMENT = """\
# Private test instance of Dovecot, written by chatmaild/tests/dovecot_harness.py.
base_dir = {base}/run
state_dir = {base}/state
instance_name = chatmail-test-{port}
log_path = {base}/dovecot.log
# Debian's plugins and chatmail_notify, built for this instance (build_plugins below)
mail_plugin_dir = {base}/modules
protocols = imap lmtp
listen = 127.0.0.1
ssl = no
# Only this loopback test instance accepts plaintext logins without TLS.
disable_plaintext_auth = no
auth_failure_delay = 0
default_internal_user = dovecot
default_login_user = dovenull
first_valid_uid = 1

service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener imaps {{
    port = 0
  }}
  service_count = 0
  process_min_avail = 2
}}
service lmtp {{
  unix_listener {base}/lmtp.socket {{
    mode = 0666
  }}
}}
service stats {{
  unix_listener stats-reader {{
    mode = 0666
  }}
  unix_listener stats-writer {{
    mode = 0666
  }}
}}
"""

# The benchmark's baseline: Dovecot checks every login against one fixed hash, asks nobody.
STATIC_AUTH = """\
auth_mechanisms = plain
passdb {{
  driver = static
  args = password={password_hash}
}}
userdb {{
  driver = static
  args = uid=vmail gid=vmail home={mailboxes}/%u
}}
mail_location = maildir:{mailboxes}/%u
service anvil {{
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}
"""

SERVICES = {
    # name: (module, extra arguments)
    "doveauth": ("doveauth", ["--nocreate-file", "{nocreate}"]),
    "lastlogin": ("lastlogin", []),
    "metadata": ("metadata", []),
}


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A free port on 127.0.0.1, never one handed out before (the probe closes at once, so
    the kernel may offer a port again to the next caller of a fixture that needs several)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


def wait_for(predicate: Callable[[], bool], timeout: float = 15.0, what: str = "it") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.02)


def can_connect_unix(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX) as s:
        try:
            s.connect(str(path))
        except OSError:
            return False
    return True


def can_connect_tcp(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


@dataclass
class Relay:
    """The chatmaild services and a private Dovecot, all started for one test module."""

    base: Path
    ini: Path
    mailboxes: Path
    imap_port: int
    lmtp_socket: Path
    sockets: Path
    nocreate_file: Path
    turn_secret_file: Path
    dovecot_conf: Path
    push: FakePushServer
    # the running chatmaild services by name, and how each was started
    services: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    service_argv: dict[str, list[str]] = field(default_factory=dict)

    def socket(self, name: str) -> Path:
        return self.sockets / f"{name}.socket"

    @property
    def doveauth_socket(self) -> Path:
        return self.socket("doveauth")

    def doveadm(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["doveadm", "-c", str(self.dovecot_conf), *args],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )

    def dovecot_log(self) -> str:
        path = self.base / "dovecot.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def service_log(self, name: str) -> str:
        return (self.base / f"{name}.log").read_text(errors="replace")

    def start_service(self, name: str) -> None:
        """Start the service `name` (as vmail, its output appended to its log) and wait
        until its socket answers."""
        vmail = pwd.getpwnam("vmail")
        with open(self.base / f"{name}.log", "ab") as log:
            self.services[name] = subprocess.Popen(
                self.service_argv[name],
                stdout=log,
                stderr=subprocess.STDOUT,
                user=vmail.pw_uid,
                group=vmail.pw_gid,
                extra_groups=[],
            )
        wait_for(lambda: can_connect_unix(self.socket(name)), what=name)

    def stop_service(self, name: str) -> None:
        stop_process(self.services.pop(name))

    def restart_service(self, name: str) -> None:
        """SIGTERM the service, as systemd's restart does, and start it again."""
        self.stop_service(name)
        self.start_service(name)


def lmtp_to_each(lmtp_socket: Path, sender: str, rcpts: list[str], message: bytes) -> list[int]:
    """One LMTP transaction for all of `rcpts`; the reply code for each (RFC 2033 §4.2: LMTP
    answers the end of data once per recipient, which smtplib's sendmail does not read)."""
    with smtplib.LMTP(str(lmtp_socket)) as lmtp:
        lmtp.ehlo()
        lmtp.mail(sender)
        for rcpt in rcpts:
            lmtp.rcpt(rcpt)
        return [lmtp.data(message)[0]] + [lmtp.getreply()[0] for _ in rcpts[1:]]


def stop_process(proc: subprocess.Popen[bytes]) -> bool:
    """End the process; whether SIGTERM did it (within 15 s) or SIGKILL had to."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return False
    return True


def service_command(base: Path, module: str) -> list[str]:
    # The services run as vmail, which may not read this checkout or the test runner's
    # Python (e.g. under /root): Debian's python3 runs a copy of the package instead.
    code = f"import sys; sys.path.insert(0, {str(base / 'lib')!r}); "
    code += f"from chatmaild.{module} import main; main(sys.argv[1:])"
    return ["/usr/bin/python3", "-c", code]


def _vmail_dir(path: Path, vmail: pwd.struct_passwd) -> Path:
    path.mkdir()
    os.chown(path, vmail.pw_uid, vmail.pw_gid)
    return path


def build_plugins(base: Path) -> Path:
    """`base/modules`: Debian's Dovecot plugins, and chatmail_notify compiled as a relay's
    deploy compiles it (needs gcc and dovecot-dev, which scripts/test installs)."""
    modules = base / "modules"
    modules.mkdir()
    for module in Path(plugin.MODULE_DIR).iterdir():
        (modules / module.name).symlink_to(module)
    source = base / plugin.SOURCE
    source.write_text(plugin.source())
    subprocess.run(
        plugin.build_command(str(source), str(modules / plugin.MODULE)),
        check=True,
        capture_output=True,
        timeout=120,
    )
    return modules


def _write_config(relay: Relay, static_password_hash: str | None) -> None:
    environment = TEST_ENVIRONMENT.format(base=relay.base, port=relay.imap_port)
    if static_password_hash is not None:
        auth = STATIC_AUTH.format(password_hash=static_password_hash, mailboxes=relay.mailboxes)
        relay.dovecot_conf.write_text(environment + auth)
        return
    layout = Layout(
        read_config(relay.ini),
        doveauth_socket=PurePosixPath(relay.socket("doveauth")),
        lastlogin_socket=PurePosixPath(relay.socket("lastlogin")),
        metadata_socket=PurePosixPath(relay.socket("metadata")),
    )
    # the quota warning runs as vmail: the same copy of chatmaild the services use
    quota_expire = relay.base / "chatmail-quota-expire"
    argv = " ".join(shlex.quote(arg) for arg in service_command(relay.base, "quota_expire"))
    quota_expire.write_text(f'#!/bin/sh\nexec {argv} "$@"\n')
    quota_expire.chmod(0o755)
    conf_dir = PurePosixPath(relay.base)
    files = dovecot_files(layout, conf_dir)
    files[str(conf_dir / "chatmail.conf")] = chatmail_conf(
        layout, conf_dir, quota_expire=quota_expire
    )
    for name in ("chatmail.conf", "auth-dict.conf.ext"):
        (relay.base / name).write_text(files[str(conf_dir / name)])
    relay.dovecot_conf.write_text(environment + f"!include {relay.base / 'chatmail.conf'}\n")


@contextlib.contextmanager
def running_relay(
    static_password_hash: str | None = None,
    extra_params: str = "",
    dovecot_settings: str = "",
    edit_config: Callable[[Path], None] | None = None,
) -> Iterator[Relay]:
    """Start the services and Dovecot; with `static_password_hash`, Dovecot alone (baseline).

    `extra_params` go into chatmail.ini; `dovecot_settings` after the relay's Dovecot
    configuration, where they take precedence (e.g. a short `imap_hibernate_timeout`).
    `edit_config(base)` may rewrite the written files before Dovecot starts, for what a later
    setting cannot undo (a userdb block, the Lua script): the delivery benchmark's variants.
    """
    if os.geteuid() != 0 or shutil.which("dovecot") is None:
        raise RuntimeError("needs root and Debian's dovecot-imapd (scripts/test installs it)")
    vmail = pwd.getpwnam("vmail")
    base = Path(tempfile.mkdtemp(prefix="chatmail-dovecot-"))
    base.chmod(0o755)
    procs: list[subprocess.Popen[bytes]] = []  # Dovecot's master
    relay: Relay | None = None
    try:
        with running_fake_push() as push:
            relay = Relay(
                base=base,
                ini=base / "chatmail.ini",
                mailboxes=_vmail_dir(base / "mailboxes", vmail),
                imap_port=free_port(),
                lmtp_socket=base / "lmtp.socket",
                sockets=_vmail_dir(base / "sockets", vmail),
                nocreate_file=base / "nocreate",
                turn_secret_file=base / "turn-secret",
                dovecot_conf=base / "dovecot.conf",
                push=push,
            )
            relay.turn_secret_file.write_text("7e57" * 16 + "\n")  # as the deploy makes it: hex
            relay.turn_secret_file.chmod(0o644)
            relay.ini.write_text(
                "[params]\nmail_domain = example.org\n"
                f"mailboxes_dir = {relay.mailboxes}\n"
                f"push_endpoint = {push.url}\n"
                f"turn_secret_file = {relay.turn_secret_file}\n"
                "privacy_mail = privacy@example.org\n"
                # the test machine may be busy or small; the resource gate has its unit tests
                "max_load_1m = 1000\nmin_available_memory = 0\nmin_free_disk_space = 0\n"
                + extra_params
            )
            relay.ini.chmod(0o644)
            build_plugins(base)
            _write_config(relay, static_password_hash)
            with relay.dovecot_conf.open("a") as conf:
                conf.write(dovecot_settings)
            if edit_config is not None:
                edit_config(base)
            if static_password_hash is None:
                shutil.copytree(Path(chatmaild.__file__).parent, base / "lib" / "chatmaild")
                for name, (module, extra) in SERVICES.items():
                    relay.service_argv[name] = [
                        *service_command(base, module),
                        str(relay.socket(name)),
                        str(relay.ini),
                        *(arg.format(nocreate=relay.nocreate_file) for arg in extra),
                    ]
                    relay.start_service(name)
            procs.append(subprocess.Popen(["dovecot", "-F", "-c", str(relay.dovecot_conf)]))
            wait_for(lambda: can_connect_tcp(relay.imap_port), what="dovecot IMAP port")
            yield relay
    finally:
        for proc in procs:
            stop_process(proc)
        if relay is not None:
            for name in reversed(list(relay.services)):
                relay.stop_service(name)
        shutil.rmtree(base, ignore_errors=True)
