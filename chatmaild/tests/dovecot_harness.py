"""A private instance of Debian's Dovecot for component tests and the auth benchmark.

It has its own base_dir, config and log in a temporary directory, listens for plaintext IMAP
on a high loopback port (plaintext auth is allowed only here), and asks the doveauth and
lastlogin services over their unix sockets exactly as a relay's Dovecot does.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import chatmaild

DOVECOT_CONF = """\
# Private test instance of Dovecot, written by chatmaild/tests/dovecot_harness.py.
base_dir = {base}/run
state_dir = {base}/state
instance_name = chatmail-test-{port}
log_path = {base}/dovecot.log
protocols = imap
listen = 127.0.0.1
ssl = no
# Only this loopback test instance accepts plaintext logins without TLS.
disable_plaintext_auth = no
auth_mechanisms = plain
auth_username_chars = abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ01234567890.-_@[]
auth_failure_delay = 0
default_internal_user = dovecot
default_login_user = dovenull
mail_location = maildir:{mailboxes}/%u
mail_uid = vmail
mail_gid = vmail
first_valid_uid = 1
mail_plugins = $mail_plugins

{auth}

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
service stats {{
  unix_listener stats-reader {{
    mode = 0666
  }}
  unix_listener stats-writer {{
    mode = 0666
  }}
}}
service anvil {{
  # All test clients come from 127.0.0.1, as a relay's clients do behind its 443
  # multiplexer: the auth penalty per IP would only slow everyone down (spec §6).
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}

protocol imap {{
  mail_plugins = $mail_plugins last_login
}}
plugin {{
  last_login_dict = proxy:{lastlogin_socket}:lastlogin
  last_login_key = last-login/%u
  last_login_precision = s
}}
"""

DICT_AUTH = """\
passdb {{
  driver = dict
  args = {base}/auth-dict.conf.ext
}}
userdb {{
  driver = dict
  args = {base}/auth-dict.conf.ext
}}
"""

# The benchmark's baseline: Dovecot checks every login against one fixed hash, asks nobody.
STATIC_AUTH = """\
passdb {{
  driver = static
  args = password={password_hash}
}}
userdb {{
  driver = static
  args = uid=vmail gid=vmail home={mailboxes}/%u
}}
"""

AUTH_DICT_CONF = """\
uri = proxy:{doveauth_socket}:auth
iterate_disable = no
iterate_prefix = userdb/
default_pass_scheme = plain
password_key = passdb/%Ew"%Eu
user_key = userdb/%Eu
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(predicate: object, timeout: float = 15.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
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


def _can_connect_tcp(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


@dataclass
class Relay:
    """The chatmaild services and a private Dovecot, all started for one test session."""

    base: Path
    ini: Path
    mailboxes: Path
    imap_port: int
    doveauth_socket: Path
    lastlogin_socket: Path
    nocreate_file: Path
    dovecot_conf: Path
    service_logs: dict[str, Path]

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
        return self.service_logs[name].read_text(errors="replace")


def _as_vmail() -> dict[str, object]:
    """subprocess arguments that run a service as vmail, as on a relay."""
    pw = pwd.getpwnam("vmail")
    return {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}


def _service_command(base: Path, module: str) -> list[str]:
    code = f"import sys; sys.path.insert(0, {str(base / 'lib')!r}); "
    code += f"from chatmaild.{module} import main; main(sys.argv[1:])"
    return ["/usr/bin/python3", "-c", code]


@contextlib.contextmanager
def running_relay(static_password_hash: str | None = None) -> Iterator[Relay]:
    """Start the services and Dovecot; with `static_password_hash`, Dovecot alone (baseline)."""
    if os.geteuid() != 0 or shutil.which("dovecot") is None:
        raise RuntimeError("needs root and Debian's dovecot-imapd (scripts/test installs it)")
    vmail = pwd.getpwnam("vmail")
    base = Path(tempfile.mkdtemp(prefix="chatmail-dovecot-"))
    base.chmod(0o755)
    mailboxes = base / "mailboxes"
    mailboxes.mkdir()
    os.chown(mailboxes, vmail.pw_uid, vmail.pw_gid)
    sockets = base / "sockets"
    sockets.mkdir()
    os.chown(sockets, vmail.pw_uid, vmail.pw_gid)
    port = free_port()
    relay = Relay(
        base=base,
        ini=base / "chatmail.ini",
        mailboxes=mailboxes,
        imap_port=port,
        doveauth_socket=sockets / "doveauth.socket",
        lastlogin_socket=sockets / "lastlogin.socket",
        nocreate_file=base / "nocreate",
        dovecot_conf=base / "dovecot.conf",
        service_logs={"doveauth": base / "doveauth.log", "lastlogin": base / "lastlogin.log"},
    )
    relay.ini.write_text(
        "[params]\nmail_domain = example.org\n"
        f"mailboxes_dir = {mailboxes}\n"
        # the test machine may be busy or small; the resource gate has its own unit tests
        "max_load_1m = 1000\nmin_available_memory = 0\nmin_free_disk_space = 0\n"
    )
    relay.ini.chmod(0o644)
    relay.dovecot_conf.write_text(
        DOVECOT_CONF.format(
            base=base,
            port=port,
            mailboxes=mailboxes,
            lastlogin_socket=relay.lastlogin_socket,
            auth=(
                DICT_AUTH.format(base=base)
                if static_password_hash is None
                else STATIC_AUTH.format(password_hash=static_password_hash, mailboxes=mailboxes)
            ),
        )
    )
    (base / "auth-dict.conf.ext").write_text(
        AUTH_DICT_CONF.format(doveauth_socket=relay.doveauth_socket)
    )
    # The services run as vmail, which may not read this checkout or the test runner's
    # Python (e.g. under /root): run Debian's python3 on a copy of the package instead.
    shutil.copytree(Path(chatmaild.__file__).parent, base / "lib" / "chatmaild")
    procs: list[subprocess.Popen[bytes]] = []
    try:
        services = {
            "doveauth": [
                *_service_command(base, "doveauth"),
                str(relay.doveauth_socket),
                str(relay.ini),
                "--nocreate-file",
                str(relay.nocreate_file),
            ],
            "lastlogin": [
                *_service_command(base, "lastlogin"),
                str(relay.lastlogin_socket),
                str(relay.ini),
            ],
        }
        for name, argv in services.items():
            with open(relay.service_logs[name], "wb") as log:
                procs.append(
                    subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, **_as_vmail())  # type: ignore[call-overload]
                )
        wait_for(lambda: can_connect_unix(relay.doveauth_socket), what="doveauth socket")
        wait_for(lambda: can_connect_unix(relay.lastlogin_socket), what="lastlogin socket")
        procs.append(subprocess.Popen(["dovecot", "-F", "-c", str(relay.dovecot_conf)]))
        wait_for(lambda: _can_connect_tcp(port), what="dovecot IMAP port")
        yield relay
    finally:
        for proc in reversed(procs):
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(base, ignore_errors=True)
