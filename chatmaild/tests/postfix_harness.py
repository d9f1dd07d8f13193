"""A private instance of Debian's Postfix, configured from the relay's own templates, with the
real `filtermail incoming` in front of it and the private Dovecot of `dovecot_harness` behind.

The mail flow is the relay's port-25 path (doc/encryption-gate.md §1):
a peer talks to Postfix's smtpd (STARTTLS mandatory), which hands the live dialogue to
`filtermail incoming` (`smtpd_proxy_filter`); the gate re-injects what it accepts into the
second smtpd (`postfix_reinject_port_incoming`), and Postfix delivers over LMTP to Dovecot.
`/mxdeliv` (filtermail's HTTP port) ends in the same re-injection.

main.cf and master.cf are rendered by `cmdeploy.postfix.postfix_files` and then changed with
`postconf` only where a test instance must differ: `main_cf_changes`, `MAIN_CF_REMOVED` and
the removed master.cf services below name each change and why, and
`PostfixRelay.differences_from_templates` lists what actually differs, so a test can check
that nothing else does. Everything Postfix does with
an address (mydestination, recipient_delimiter, allow_percent_hack, swap_bangpath,
strict_rfc821_envelopes, the listener's smtpd_proxy_filter and relay restrictions, ...) is
the template's value.

The instance has its own config_directory, queue_directory and data_directory in a temporary
directory, listens on loopback high ports only, logs to a file there (`maillog_file`), and is
stopped with `postfix -c DIR stop`. Every wait has a deadline.
"""

from __future__ import annotations

import contextlib
import functools
import grp
import os
import pwd
import re
import shutil
import signal
import smtplib
import socket
import ssl
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import pytest
from dovecot_harness import Relay, free_port, running_relay, stop_process, wait_for
from socket_activation import popen_with_socket

from chatmaild.config import Config, read_config
from cmdeploy.layout import Layout
from cmdeploy.postfix import postfix_files

_SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
POSTFIX = shutil.which("postfix", path=_SEARCH_PATH)
POSTCONF = shutil.which("postconf", path=_SEARCH_PATH)
OPENSSL = shutil.which("openssl", path=_SEARCH_PATH)
FILTERMAIL = Path(sys.executable).parent / "filtermail"

# The test client connects from here: outside `mynetworks` (main_cf_changes), like a peer.
PEER_ADDRESS = "127.0.0.2"
LISTEN_ADDRESS = "127.0.0.1"
# Postfix queue files still on their way: present until delivered, bounced or deferred.
MOVING_QUEUES = ("maildrop", "incoming", "active")
STARTUP_TIMEOUT = 20.0
SETTLE_TIMEOUT = 20.0


def postfix_missing() -> str | None:
    """Why the harness cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root"
    for name, path in (("postfix", POSTFIX), ("postconf", POSTCONF), ("openssl", OPENSSL)):
        if path is None:
            return f"needs {name} (scripts/test installs Debian's postfix)"
    try:
        pwd.getpwnam("postfix")
    except KeyError:
        return "needs the postfix user (Debian's postfix package creates it)"
    if not FILTERMAIL.exists():
        return f"needs the filtermail console script at {FILTERMAIL}"
    return None


def postfix_or_skip() -> None:
    """Tests of the real Postfix: skipped locally where it cannot run, failed in CI."""
    missing = postfix_missing()
    if missing and os.environ.get("CI"):
        pytest.fail(f"component tests cannot run: {missing}")
    if missing:
        pytest.skip(missing)


def unverified_tls() -> ssl.SSLContext:
    """The client side of STARTTLS to the harness's throwaway certificate."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def main_cf_changes(base: Path, relay: Relay) -> dict[str, str]:
    """main.cf parameters the test instance sets differently from the templates."""
    return {
        # a private instance: nothing of the host's Postfix is touched
        "queue_directory": str(base / "spool"),
        "data_directory": str(base / "data"),
        # loopback only (the template listens on all interfaces). Postfix also counts an IP
        # literal of these addresses as the host itself: local@[127.0.0.1] is local here, as
        # it is on a relay (where 127.0.0.1 is among "all").
        "inet_interfaces": LISTEN_ADDRESS,
        # the template trusts all of 127.0.0.0/8; here the test client comes from 127.0.0.2 and
        # must be a stranger like any peer; filtermail re-injects from 127.0.0.1
        "mynetworks": f"{LISTEN_ADDRESS}/32",
        # no syslog/journald and no chatmail-postlog on a test machine: a file (postlogd)
        "maillog_file": str(base / "maillog"),
        "maillog_file_prefixes": str(base),
        # a throwaway self-signed certificate instead of the relay's
        "smtpd_tls_cert_file": str(base / "tls" / "cert.pem"),
        "smtpd_tls_key_file": str(base / "tls" / "key.pem"),
        # the private Dovecot's LMTP socket; the template names the system spool's
        # private/dovecot-lmtp
        "local_transport": f"lmtp:unix:{relay.lmtp_socket}",
        # nothing leaves this machine: a bounce to a test sender, or a recipient Postfix
        # rewrites to another domain, fails at once with this text instead of trying the net
        "default_transport": "error:5.7.1 the test relay delivers nothing to other hosts",
    }


MAIN_CF_REMOVED = (
    # no OpenDKIM here: with these, every bounce would wait for the milter
    "non_smtpd_milters",
    "internal_mail_filter_classes",
    # only submission/smtps use these; postconf warns about unused parameters
    "mua_client_restrictions",
    "mua_helo_restrictions",
    "mua_sender_restrictions",
    # the transport to other relays is removed (default_transport above)
    "filtermail-transport_destination_concurrency_limit",
    "filtermail-transport_initial_destination_concurrency",
    "filtermail-transport_destination_recipient_limit",
)


@dataclass
class PostfixRelay:
    """The private Postfix, the filtermail processes and the Dovecot behind them."""

    base: Path
    config_dir: Path
    template_dir: Path
    queue_dir: Path
    maillog: Path
    ini: Path
    config: Config
    dovecot: Relay
    smtp_port: int  # the listener of port 25
    # master.cf services the test instance leaves out (see `_adapt`)
    removed_services: tuple[str, ...] = ()
    filtermail_logs: dict[str, Path] = field(default_factory=dict)
    # `postconf -n` of this instance: {name: value}
    settings: dict[str, str] = field(default_factory=dict)

    @property
    def domain(self) -> str:
        return self.config.address_domain

    @property
    def reinject_port(self) -> int:
        return self.config.postfix_reinject_port_incoming

    @property
    def mxdeliv_port(self) -> int:
        return self.config.filtermail_http_port_incoming

    @property
    def smtp_service(self) -> str:
        """The master.cf name of the port-25 listener."""
        return f"{LISTEN_ADDRESS}:{self.smtp_port}/inet"

    def postconf(self, *args: str) -> str:
        return _postconf(self.config_dir, *args)

    def effective(self, *names: str) -> dict[str, str]:
        """The values Postfix uses, defaults included and expanded: `postconf -x NAME...`."""
        return _parse_postconf(self.postconf("-x", *names))

    def service_parameters(self, service: str) -> dict[str, str]:
        """The `-o` overrides of one master.cf service: `postconf -P`."""
        return _service_parameters(self.config_dir, service)

    def differences_from_templates(self) -> dict[str, tuple[str | None, str | None]]:
        """{what: (template value, test value)} of every main.cf parameter (`postconf -n`) and
        every `-o` of master.cf (`postconf -P`) that differs from the rendered templates.

        The port-25 listener is compared under its new name; the directory of the lookup
        tables (the templates' own `config_dir`) is the same to both sides.
        """
        own_dir = str(self.config_dir)

        def template_text(*args: str) -> str:
            return _postconf(self.template_dir, *args).replace(str(self.template_dir), own_dir)

        template_main = _parse_postconf(template_text("-n"))
        test_main = dict(self.settings)
        template_master = _parse_service_parameters(template_text("-P"))
        template_master = {
            key.replace("smtp/inet/", f"{self.smtp_service}/", 1)
            if key.startswith("smtp/inet/")
            else key: value
            for key, value in template_master.items()
            if not key.startswith(tuple(f"{s}/" for s in self.removed_services))
        }
        test_master = _parse_service_parameters(self.postconf("-P"))
        differences: dict[str, tuple[str | None, str | None]] = {}
        for template, test in ((template_main, test_main), (template_master, test_master)):
            for name in sorted(set(template) | set(test)):
                if name != "config_directory" and template.get(name) != test.get(name):
                    differences[name] = (template.get(name), test.get(name))
        return differences

    def log(self) -> str:
        return self.maillog.read_text(errors="replace") if self.maillog.exists() else ""

    def moving_queue_files(self) -> list[Path]:
        files: list[Path] = []
        for queue in MOVING_QUEUES:
            for root, _dirs, names in os.walk(self.queue_dir / queue):
                files.extend(Path(root) / name for name in names)
        return files

    def wait_queue_settled(self, timeout: float = SETTLE_TIMEOUT) -> None:
        """Until no message is on its way: each was delivered, bounced or deferred.

        A message Postfix accepted is in its queue before the 250 reaches the client, so this
        is enough to know the outcome of everything sent before.
        """
        wait_for(lambda: not self.moving_queue_files(), timeout, "Postfix's queue to settle")

    def trail(self, marker: str) -> list[str]:
        """The log lines of every queue file that carried the message with `marker` in its
        Message-ID (cleanup logs `message-id=<...>`), with the bounces they caused."""
        lines = self.log().splitlines()
        queue_ids = {_queue_id(line) for line in lines if f"message-id=<{marker}" in line}
        queue_ids.discard(None)
        for line in lines:  # "QID: sender non-delivery notification: BOUNCEQID"
            qid = _queue_id(line)
            if qid in queue_ids and "notification: " in line:
                queue_ids.add(line.rpartition(": ")[2].strip())
        return [line for line in lines if _queue_id(line) in queue_ids]


_QUEUE_ID = re.compile(r"[0-9A-F]{6,}")  # Postfix's short queue IDs (enable_long_queue_ids = no)


def _queue_id(line: str) -> str | None:
    """The queue ID a Postfix log line is about: `... postfix/x[pid]: QID: text`."""
    _prefix, sep, rest = line.partition("]: ")
    if not sep:
        return None
    candidate, sep, _text = rest.partition(": ")
    return candidate if sep and _QUEUE_ID.fullmatch(candidate) else None


def _postconf(config_dir: Path, *args: str) -> str:
    """stdout of `postconf -c DIR ...`; any complaint on stderr is an error."""
    assert POSTCONF is not None
    result = subprocess.run(
        [POSTCONF, "-c", str(config_dir), *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if result.returncode != 0 or result.stderr:
        raise RuntimeError(f"postconf {' '.join(args)}: {result.stderr.strip()}")
    return result.stdout


def _parse_postconf(text: str) -> dict[str, str]:
    values = {}
    for line in text.splitlines():
        name, _, value = line.partition(" =")  # "name =" when empty
        values[name] = value.removeprefix(" ")
    return values


def _parse_service_parameters(text: str) -> dict[str, str]:
    """`postconf -P` output: {"service/type/parameter": value}."""
    return _parse_postconf(text)


def _service_parameters(config_dir: Path, service: str) -> dict[str, str]:
    prefix = f"{service}/"
    values = _parse_service_parameters(_postconf(config_dir, "-P"))
    return {k.removeprefix(prefix): v for k, v in values.items() if k.startswith(prefix)}


def _render(config: Config, config_dir: Path) -> None:
    """The relay's Postfix files, exactly as the deploy renders them, into config_dir."""
    config_dir.mkdir(parents=True)
    files = postfix_files(
        Layout(config),
        config_dir=PurePosixPath(config_dir),
        unit_dir=PurePosixPath(config_dir / "unused-systemd"),
    )
    for name, content in files.items():
        if Path(name).parent == config_dir:  # not the systemd drop-in
            Path(name).write_text(content, encoding="utf-8")


def _settle_mtimes(config_dir: Path) -> None:
    # Postfix waits until a just-written main.cf is about 2 s old before it reads it; an
    # older time stamp keeps every daemon start from sleeping
    for path in config_dir.iterdir():
        if path.is_file():
            os.utime(path, (0, 0))


def _adapt(postfix: PostfixRelay, relay: Relay) -> None:
    """Change the rendered files where a test instance must differ, with postconf."""
    conf = postfix.config_dir
    # the services first: while they exist, removing their parameters is a warning
    _postconf(conf, "-MX", *postfix.removed_services)
    changes = main_cf_changes(postfix.base, relay)
    _postconf(conf, "-e", *(f"{name}={value}" for name, value in changes.items()))
    _postconf(conf, "-X", *MAIN_CF_REMOVED)
    # port 25 -> a loopback high port, with the template's command and every -o option
    entry = _postconf(conf, "-M", "smtp/inet").strip()
    name, _, rest = entry.partition(" ")
    assert name == "smtp", entry
    _postconf(conf, "-MX", "smtp/inet")
    _postconf(conf, "-M", f"{postfix.smtp_service}={LISTEN_ADDRESS}:{postfix.smtp_port} {rest}")
    _settle_mtimes(conf)


def _self_signed_certificate(tls_dir: Path, domain: str) -> None:
    assert OPENSSL is not None
    tls_dir.mkdir()
    subprocess.run(
        [OPENSSL, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-days", "2", "-subj", f"/CN={domain}",
         "-keyout", str(tls_dir / "key.pem"), "-out", str(tls_dir / "cert.pem")],
        capture_output=True,
        timeout=30,
        check=True,
    )  # fmt: skip


def _write_ini(base: Path, relay: Relay, ports: dict[str, int]) -> Path:
    """The Dovecot harness's chatmail.ini (domain, mailboxes) plus this instance's ports."""
    ini = base / "chatmail.ini"
    ini.write_text(
        relay.ini.read_text()
        + "".join(f"{name} = {port}\n" for name, port in ports.items())
        + f"filtermail_host = {LISTEN_ADDRESS}\npostfix_host = {LISTEN_ADDRESS}\n"
    )
    return ini


def _run_postfix(postfix: PostfixRelay, command: str) -> None:
    assert POSTFIX is not None
    result = subprocess.run(
        [POSTFIX, "-c", str(postfix.config_dir), command],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"postfix {command}: {result.stderr.strip()}\n{postfix.log()}")


def _master_pid(postfix: PostfixRelay) -> int | None:
    try:
        return int((postfix.queue_dir / "pid" / "master.pid").read_text().strip())
    except (OSError, ValueError):
        return None


def _gone(pid: int) -> bool:
    """Whether the process has exited (a zombie counts: nothing is left but its entry)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[0] == "Z"


def _smtp_greets(port: int) -> bool:
    try:
        with smtplib.SMTP(LISTEN_ADDRESS, port, timeout=2) as smtp:
            return smtp.noop()[0] == 250
    except (OSError, smtplib.SMTPException):
        return False


def _can_connect(port: int) -> bool:
    try:
        with socket.create_connection((LISTEN_ADDRESS, port), timeout=1):
            return True
    except OSError:
        return False


def _until_listening(proc: subprocess.Popen[bytes], log: Path, ready: Callable[[], bool]) -> None:
    def check() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"filtermail exited: {log.read_text(errors='replace')}")
        return ready()

    wait_for(check, STARTUP_TIMEOUT, f"filtermail ({log.name})")


def _stop_postfix(postfix: PostfixRelay) -> None:
    pid = _master_pid(postfix)
    if pid is None or _gone(pid):
        return
    with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
        _run_postfix(postfix, "stop")
    with contextlib.suppress(TimeoutError):
        wait_for(lambda: _gone(pid), 15, "Postfix's master to exit")
        return
    # `postfix stop` did not end it: the master we started, and only it, is killed
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


@contextlib.contextmanager
def running_postfix(
    relay: Relay, adapt: Callable[[PostfixRelay], None] | None = None
) -> Iterator[PostfixRelay]:
    """Start filtermail incoming and a private Postfix in front of the Dovecot of `relay`.

    `adapt(postfix)` may change the instance further (with `postfix.postconf`) before Postfix
    starts: the variants of bench_postfix.py. The tests pass none.
    """
    missing = postfix_missing()
    if missing:
        raise RuntimeError(missing)
    postfix_user = pwd.getpwnam("postfix")
    base = Path(tempfile.mkdtemp(prefix="chatmail-postfix-"))
    base.chmod(0o755)
    procs: list[subprocess.Popen[bytes]] = []
    postfix: PostfixRelay | None = None
    try:
        ports = {
            "filtermail_smtp_port_incoming": free_port(),
            "filtermail_http_port_incoming": free_port(),
            "postfix_reinject_port": free_port(),
            "postfix_reinject_port_incoming": free_port(),
            "postfix_reinject_port_smtp": free_port(),
            "filtermail_lmtp_port_transport": free_port(),
        }
        ini = _write_ini(base, relay, ports)
        config = read_config(ini)
        postfix = PostfixRelay(
            base=base,
            config_dir=base / "etc",
            template_dir=base / "template",
            queue_dir=base / "spool",
            maillog=base / "maillog",
            ini=ini,
            config=config,
            dovecot=relay,
            smtp_port=free_port(),
            # Submission needs Dovecot's SASL socket and the outgoing gate, outgoing
            # re-injection needs OpenDKIM, and the way out to other relays is not taken here:
            # none of them is on the path of mail from peers
            removed_services=(
                "submission/inet",
                "smtps/inet",
                f"{LISTEN_ADDRESS}:{ports['postfix_reinject_port']}/inet",
                f"{LISTEN_ADDRESS}:{ports['postfix_reinject_port_smtp']}/inet",
                "filtermail-transport/unix",
            ),
        )
        _render(config, postfix.template_dir)
        _render(config, postfix.config_dir)
        _adapt(postfix, relay)
        if adapt is not None:
            adapt(postfix)
            _settle_mtimes(postfix.config_dir)
        postfix.settings = _parse_postconf(postfix.postconf("-n"))
        _self_signed_certificate(base / "tls", config.address_domain)
        postfix.queue_dir.mkdir()
        (base / "data").mkdir()
        os.chown(base / "data", postfix_user.pw_uid, postfix_user.pw_gid)
        _run_postfix(postfix, "check")  # creates the queue's subdirectories
        _run_postfix(postfix, "start")
        wait_for(lambda: "daemon started" in postfix.log(), STARTUP_TIMEOUT, "Postfix's master")
        for port in (postfix.smtp_port, postfix.reinject_port):
            wait_for(functools.partial(_smtp_greets, port), STARTUP_TIMEOUT, f"Postfix on {port}")
        # the gate runs as root here (on a relay as vmail): it only reads the mailboxes
        log = base / "filtermail-incoming.log"
        postfix.filtermail_logs["incoming"] = log
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [str(FILTERMAIL), str(ini), "incoming"], stdout=out, stderr=subprocess.STDOUT
            )
        procs.append(proc)
        _until_listening(proc, log, lambda: _smtp_greets(config.filtermail_smtp_port_incoming))
        _until_listening(proc, log, lambda: _can_connect(config.filtermail_http_port_incoming))
        yield postfix
    finally:
        for proc in procs:
            stop_process(proc)
        if postfix is not None:
            _stop_postfix(postfix)
        shutil.rmtree(base, ignore_errors=True)


# Dovecot's SASL socket where the harness's Postfix can reach it (running_relay's
# dovecot_settings; the submission listener's smtpd_sasl_path)
SASL_LISTENER = "service auth {{\n  unix_listener {path} {{\n    mode = 0666\n  }}\n}}\n"


@dataclass
class Submission:
    relay: Relay
    postfix: PostfixRelay
    port: int  # the submission listener's


@contextlib.contextmanager
def running_submission() -> Iterator[Submission]:
    """A private Dovecot with its SASL socket where Postfix reaches it, and the instance of
    `running_postfix` with the relay's submission path added (`_with_submission`)."""
    with tempfile.TemporaryDirectory(prefix="chatmail-sasl-") as sasl_dir:
        Path(sasl_dir).chmod(0o755)  # Postfix's smtpd connects as the postfix user
        sasl = Path(sasl_dir) / "auth"
        with (
            running_relay(dovecot_settings=SASL_LISTENER.format(path=sasl)) as relay,
            running_postfix(relay) as postfix,
            _with_submission(postfix, sasl) as port,
        ):
            yield Submission(relay, postfix, port)


@contextlib.contextmanager
def _with_submission(postfix: PostfixRelay, sasl: Path) -> Iterator[int]:
    """The relay's submission listener (on a loopback port; its port) added to a running
    instance as the templates have it, with its milter, the real `filtermail outgoing`, on a
    socket of the instance's, and the signing re-injection listener without OpenDKIM (which
    the harness does not run): the relay's submission path but for the signature."""
    port = free_port()
    gate = postfix.base / "gate.socket"
    name = f"{LISTEN_ADDRESS}:{port}"
    _copy_service(postfix, "submission", name)
    postfix.postconf("-P", f"{name}/inet/smtpd_milters=unix:{gate}")
    signing = f"{LISTEN_ADDRESS}:{postfix.config.postfix_reinject_port}"
    _copy_service(postfix, signing, signing)
    postfix.postconf("-PX", f"{signing}/inet/smtpd_milters")
    for each in ("mua_client_restrictions", "mua_helo_restrictions", "mua_sender_restrictions"):
        value = postfix.postconf("-c", str(postfix.template_dir), "-h", each).strip()
        postfix.postconf("-e", f"{each}={value}")
    postfix.postconf("-e", f"smtpd_sasl_path={sasl}")
    _settle_mtimes(postfix.config_dir)
    _run_postfix(postfix, "reload")
    argv = [str(FILTERMAIL), str(postfix.ini), "outgoing"]
    log = postfix.base / "filtermail-outgoing.log"
    postfix.filtermail_logs["outgoing"] = log
    with open(log, "wb") as out:
        proc = popen_with_socket(_gate_socket(gate), argv, stdout=out, stderr=subprocess.STDOUT)
    try:
        _until_listening(proc, log, lambda: "listening" in log.read_text(errors="replace"))
        for each in (port, postfix.config.postfix_reinject_port):
            wait_for(functools.partial(_smtp_greets, each), STARTUP_TIMEOUT, f"port {each}")
        yield port
    finally:
        stop_process(proc)


def _gate_socket(path: Path) -> socket.socket:
    """The gate's socket as the relay's filtermail.socket unit makes it: listening, mode 0660,
    group postfix, so that Postfix's smtpd reaches it and nobody else."""
    listen = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listen.bind(str(path))
    os.chown(path, -1, grp.getgrnam("postfix").gr_gid)
    path.chmod(0o660)
    listen.listen(128)
    return listen


def _copy_service(postfix: PostfixRelay, service: str, name: str) -> None:
    """A master.cf inet service of the rendered templates, with its -o options, as `name`."""
    template = ["-c", str(postfix.template_dir)]
    entry = postfix.postconf(*template, "-M", f"{service}/inet").strip()
    postfix.postconf("-M", f"{name}/inet={name} {entry.partition(' ')[2]}")
    prefix = f"{service}/inet/"
    for line in postfix.postconf(*template, "-P").splitlines():
        key, _, value = line.partition(" = ")
        if key.startswith(prefix):
            postfix.postconf("-P", f"{name}/inet/{key.removeprefix(prefix)}={value}")
