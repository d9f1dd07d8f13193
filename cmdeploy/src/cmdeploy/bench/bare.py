"""The bare baseline of issue 7: stock Postfix → Dovecot on a lab host of the same kind.

The same Debian 12 base image as the relays, booted with the lab's own helpers
(`cmdeploy.lab.hosts`, `cmdeploy.lab.net`) in its own namespace `cmlab-bare` at 10.231.0.60,
with Debian's postfix, dovecot-imapd and dovecot-lmtpd and nothing else: submission on 465
with implicit TLS 1.3 and a self-signed P-256 certificate (as the relays have), SASL from
Dovecot with a static passdb (no hashing, no account creation), delivery by LMTP into one
maildir per address; no filter, no DKIM, no chatmail service. What it measures is the
physical limit of this stack on this machine, in the same run as the relay.

The tree `<lab>/bare` is kept between runs (packages installed once, about a minute); the
host itself is stopped and its namespace removed at the end of a run unless `--keep-bare`.
The static password lives only in the tree and in this process, never on the terminal.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from .hosts import BenchError, BenchHost

NAME = "bare"
NETNS = "cmlab-bare"
ADDRESS = "10.231.0.60"
DOMAIN = "bare.test"
MAILBOXES = "/var/vmail"
PACKAGES = ("postfix", "dovecot-imapd", "dovecot-lmtpd", "openssl")
PASSDB_FILE = "etc/bare-bench/passdb"
INSTALLED_MARK = "etc/bare-bench/installed"
CERT = "/etc/bare-bench/cert.pem"
KEY = "/etc/bare-bench/key.pem"


def main_cf() -> str:
    return f"""\
# bare baseline of `cmdeploy bench`: stock Postfix, submission only, LMTP to Dovecot
compatibility_level = 3.6
myhostname = {DOMAIN}
myorigin = {DOMAIN}
mydestination =
inet_interfaces = all
inet_protocols = ipv4
virtual_mailbox_domains = {DOMAIN}
virtual_transport = lmtp:unix:private/dovecot-lmtp
alias_maps =
alias_database =
local_recipient_maps =
smtpd_tls_cert_file = {CERT}
smtpd_tls_key_file = {KEY}
smtpd_tls_security_level = may
smtpd_sasl_type = dovecot
smtpd_sasl_path = private/auth
smtpd_relay_restrictions = permit_sasl_authenticated, reject
smtputf8_enable = no
biff = no
message_size_limit = 31457280
"""


# Debian's master.cf services that a mail path needs, none chrooted (as on the relays).
_MASTER_SERVICES = """\
pickup     unix  n       -       n       60      1       pickup
cleanup    unix  n       -       n       -       0       cleanup
qmgr       unix  n       -       n       300     1       qmgr
tlsmgr     unix  -       -       n       1000?   1       tlsmgr
rewrite    unix  -       -       n       -       -       trivial-rewrite
bounce     unix  -       -       n       -       0       bounce
defer      unix  -       -       n       -       0       bounce
trace      unix  -       -       n       -       0       bounce
verify     unix  -       -       n       -       1       verify
flush      unix  n       -       n       1000?   0       flush
proxymap   unix  -       -       n       -       -       proxymap
proxywrite unix  -       -       n       -       1       proxymap
smtp       unix  -       -       n       -       -       smtp
relay      unix  -       -       n       -       -       smtp
showq      unix  n       -       n       -       -       showq
error      unix  -       -       n       -       -       error
retry      unix  -       -       n       -       -       error
discard    unix  -       -       n       -       -       discard
lmtp       unix  -       -       n       -       -       lmtp
anvil      unix  -       -       n       -       1       anvil
scache     unix  -       -       n       -       1       scache
postlog    unix-dgram n  -       n       -       1       postlogd
"""


def master_cf() -> str:
    return (
        "# bare baseline of `cmdeploy bench`\n"
        "submissions inet n       -       n       -       -       smtpd\n"
        "  -o syslog_name=postfix/submissions\n"
        "  -o smtpd_tls_wrappermode=yes\n"
        "  -o smtpd_tls_security_level=encrypt\n"
        "  -o smtpd_tls_mandatory_protocols=>=TLSv1.3\n"
        "  -o smtpd_sasl_auth_enable=yes\n"
        "  -o smtpd_relay_restrictions=permit_sasl_authenticated,reject\n" + _MASTER_SERVICES
    )


def dovecot_conf(password: str) -> str:
    return f"""\
# bare baseline of `cmdeploy bench`: stock Dovecot, one static password for every address
protocols = imap lmtp
listen = *
ssl = required
ssl_cert = <{CERT}
ssl_key = <{KEY}
ssl_min_protocol = TLSv1.3
auth_mechanisms = plain
passdb {{
  driver = static
  args = password={password}
}}
userdb {{
  driver = static
  args = uid=vmail gid=vmail home={MAILBOXES}/%u
}}
mail_location = maildir:~/
# the bench opens many connections from one address
mail_max_userip_connections = 1000
default_client_limit = 20000
service auth {{
  unix_listener /var/spool/postfix/private/auth {{
    mode = 0660
    user = postfix
    group = postfix
  }}
}}
service lmtp {{
  unix_listener /var/spool/postfix/private/dovecot-lmtp {{
    mode = 0600
    user = postfix
    group = postfix
  }}
}}
"""


def install_script() -> str:
    return (
        "set -e; export DEBIAN_FRONTEND=noninteractive; "
        "echo 'postfix postfix/main_mailer_type select No configuration' "
        "| debconf-set-selections; "
        "apt-get update -qq; "
        f"apt-get install -y -qq --no-install-recommends {' '.join(PACKAGES)} >/dev/null"
    )


def configure_script() -> str:
    return (
        "set -e; "
        "id vmail >/dev/null 2>&1 || useradd --system --home-dir /var/vmail "
        "--shell /usr/sbin/nologin vmail; "
        f"mkdir -p {MAILBOXES}; chown vmail:vmail {MAILBOXES}; "
        f"find {MAILBOXES} -mindepth 1 -maxdepth 1 -exec rm -rf -- {{}} +; "
        f"test -s {KEY} || openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 "
        f"-nodes -days 36500 -subj /CN={DOMAIN} -keyout {KEY} -out {CERT} 2>/dev/null; "
        f"chmod 600 {KEY}; chgrp dovecot /etc/dovecot/dovecot.conf; "
        "chmod 640 /etc/dovecot/dovecot.conf; "
        "postfix check; doveconf -n >/dev/null; "
        "systemctl restart postfix dovecot"
    )


class BareHost:
    """Start (provisioning once), use, and stop the bare baseline host."""

    def __init__(self, say: Callable[[str], None]) -> None:
        from .. import lab

        self.say = say
        self.lab_dir = lab.LAB
        self.tree = lab.LAB / NAME
        self.pid_file = lab.LAB / "bare.pid"
        self.key = lab.LAB / "id_ed25519"
        self.password = ""

    def _pid(self) -> int:
        try:
            return int(self.pid_file.read_text())
        except (OSError, ValueError):
            return 0

    def start(self) -> BenchHost:
        from ..lab import hosts as labhosts
        from ..lab import net

        try:
            if not net.link_exists(net.BRIDGE):
                raise BenchError("the lab bridge is missing: is the lab up (`cmdeploy lab up`)?")
            base = labhosts.ensure_base_image(self.lab_dir, self.lab_dir / "debootstrap.log")
            ns = net.Namespace(NETNS, ADDRESS)
            ns.ensure()
            if not labhosts.alive(self._pid()):
                self.say(f"booting the bare baseline host ({ADDRESS})")
                labhosts.prepare_tree(base, self.tree, NAME, self.key)
                pid = labhosts.boot(self.tree, ns, NAME, self.lab_dir / "bare.console.log")
                self.pid_file.write_text(f"{pid}\n")
            labhosts.wait_ready(self.key, ADDRESS)
        except (labhosts.HostError, net.NetError) as e:
            raise BenchError(f"the bare baseline host could not start: {e}") from None
        host = BenchHost("bare", DOMAIN, ADDRESS, self.key, mailboxes=MAILBOXES)
        if not (self.tree / INSTALLED_MARK).exists():
            self.say("installing postfix and dovecot on the bare host (once, about a minute)")
            host.ssh(install_script(), timeout=900)
            (self.tree / INSTALLED_MARK).parent.mkdir(parents=True, exist_ok=True)
            (self.tree / INSTALLED_MARK).touch()
        self._write_configs()
        host.ssh(configure_script(), timeout=120)
        self._wait_listening(host)
        return host

    def _write_configs(self) -> None:
        import secrets

        secret = self.tree / PASSDB_FILE
        secret.parent.mkdir(parents=True, exist_ok=True)
        if not secret.exists() or len(secret.read_text().strip()) < 12:
            secret.write_text(secrets.token_hex(12) + "\n")
            secret.chmod(0o600)
        self.password = secret.read_text().strip()
        etc = self.tree / "etc"
        (etc / "postfix" / "main.cf").write_text(main_cf())
        (etc / "postfix" / "master.cf").write_text(master_cf())
        (etc / "dovecot" / "dovecot.conf").write_text(dovecot_conf(self.password))

    def _wait_listening(self, host: BenchHost, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        check = "ss -ltnH | awk '{print $4}'"
        while time.monotonic() < deadline:
            ports = {a.rsplit(":", 1)[-1] for a in host.ssh(check).split()}
            if {"465", "993"} <= ports:
                return
            time.sleep(0.5)
        raise BenchError("the bare baseline host's Postfix or Dovecot did not start listening")

    def stop(self) -> None:
        from ..lab import hosts as labhosts
        from ..lab import net

        pid = self._pid()
        if pid:
            labhosts.stop_process(pid)
        self.pid_file.unlink(missing_ok=True)
        net.Namespace(NETNS, ADDRESS).remove()
