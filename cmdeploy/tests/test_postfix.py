"""The relay's Postfix configuration, checked by Debian's own postconf and postmap.

Each config is rendered into a temp directory used as Postfix's config_directory. `postconf`
parses main.cf and master.cf as a deploy's validation would (any warning fails), `postmap -c`
loads main.cf's global parameters as every Postfix daemon does at start (a value Postfix
refuses, such as a numeric myhostname, is fatal there), and `postmap -q` runs the lookup
tables on the headers and addresses the relay will meet.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import pytest

from chatmaild.config import Config
from cmdeploy.chatmaild import chatmaild_files
from cmdeploy.layout import Layout
from cmdeploy.postfix import (
    MASTER_PID_FILE,
    MILTER_STAGES,
    POSTMAP_NEEDED,
    TABLES,
    postfix_files,
    postmap_needed,
)
from cmdeploy.templates import MANAGED_BY

_SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
POSTCONF = shutil.which("postconf", path=_SEARCH_PATH)
POSTMAP = shutil.which("postmap", path=_SEARCH_PATH)

needs_postfix = pytest.mark.skipif(
    (POSTCONF is None or POSTMAP is None) and not os.environ.get("CI"), reason="needs postfix"
)

CONFIGS = {
    "acme": {"mail_domain": "chat.example.org"},
    "self": {"mail_domain": "_chat.example.org"},
    "ipv4": {"mail_domain": "192.0.2.10"},
    "external": {
        "mail_domain": "chat.example.org",
        "tls_external_cert_and_key": "/etc/x/cert.pem /etc/x/key.pem",
    },
    "no-ipv6": {"mail_domain": "chat.example.org", "disable_ipv6": "true"},
    "custom": {
        "mail_domain": "chat.example.org",
        "max_message_size": "50M",
        "max_smtp_connections": "42",
        "filtermail_smtp_port_incoming": "11081",
        "postfix_reinject_port": "11025",
        "postfix_reinject_port_incoming": "11026",
        "filtermail_host": "::1",
        "postfix_host": "10.0.0.5",
    },
}


@dataclass
class Rendered:
    config: Config
    layout: Layout
    dir: Path
    files: dict[str, str]


def render(tmp_path: Path, params: dict[str, str], myhostname: str | None = None) -> Rendered:
    config = Config.from_params(params)
    layout = Layout(config)
    files = postfix_files(
        layout,
        myhostname=myhostname,
        config_dir=PurePosixPath(tmp_path),
        unit_dir=PurePosixPath(tmp_path / "systemd"),
    )
    for name, content in files.items():
        Path(name).parent.mkdir(parents=True, exist_ok=True)
        Path(name).write_text(content, encoding="utf-8")
        # Postfix waits until a just-written main.cf is about 2 s old before it reads it;
        # an older time stamp keeps the tests from sleeping
        os.utime(name, (0, 0))
    return Rendered(config, layout, tmp_path, files)


@pytest.fixture(params=sorted(CONFIGS))
def rendered(request: pytest.FixtureRequest, tmp_path: Path) -> Rendered:
    return render(tmp_path, CONFIGS[request.param])


def run(tool: str | None, *args: str) -> subprocess.CompletedProcess[str]:
    assert tool is not None
    return subprocess.run([tool, *args], capture_output=True, text=True, check=False)


def postconf(conf_dir: Path, *args: str) -> str:
    """stdout of postconf; fails on any complaint, as the deploy's validation does."""
    result = run(POSTCONF, "-c", str(conf_dir), *args)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    return result.stdout


def lookup(conf_dir: Path, table: str, key: str) -> str | None:
    """What `postmap -q` finds for key in one of the regexp tables, None if nothing."""
    result = run(POSTMAP, "-c", str(conf_dir), "-q", key, f"regexp:{conf_dir / table}")
    assert result.stderr == ""
    if result.returncode == 1:
        return None
    assert result.returncode == 0
    return result.stdout.rstrip("\n")


# --- the files themselves (no Postfix needed) -----------------------------------------------


def test_every_file_says_it_is_managed_and_no_table_needs_postmap(tmp_path: Path) -> None:
    files = render(tmp_path, CONFIGS["acme"]).files
    assert sorted(Path(name).name for name in files) == sorted(
        ["main.cf", "master.cf", *TABLES, "chatmail-postlog.conf", "chatmail-restart.conf"]
    )
    for name, content in files.items():
        assert content.startswith(f"# {MANAGED_BY}\n"), name
        assert not postmap_needed(name)
    assert POSTMAP_NEEDED == frozenset()


def test_every_table_postfix_reads_is_installed(rendered: Rendered) -> None:
    config_text = rendered.files[str(rendered.dir / "main.cf")] + "\n"
    config_text += rendered.files[str(rendered.dir / "master.cf")]
    named = set(re.findall(r"regexp:(\S+)", config_text))
    assert named == {str(rendered.dir / name) for name in TABLES}


@pytest.mark.parametrize("name", ["1.2.3.4", "[192.0.2.10]", "localhost", "bad_name!.org"])
def test_a_host_name_postfix_would_refuse_is_an_error(tmp_path: Path, name: str) -> None:
    with pytest.raises(ValueError, match="myhostname"):
        render(tmp_path, CONFIGS["ipv4"], myhostname=name)


def test_a_socket_outside_the_spool_is_an_error() -> None:
    layout = Layout(
        Config.from_params(CONFIGS["acme"]), lmtp_socket=PurePosixPath("/run/dovecot/lmtp")
    )
    with pytest.raises(ValueError, match="/var/spool/postfix"):
        postfix_files(layout)


# --- main.cf -------------------------------------------------------------------------------


@needs_postfix
def test_postconf_accepts_main_cf_without_warnings(rendered: Rendered) -> None:
    # an unknown, misspelt or unused parameter would be a warning on stderr
    assert "smtpd_peername_lookup = no" in postconf(rendered.dir, "-n")


@needs_postfix
def test_postfix_daemons_accept_the_global_parameters(rendered: Rendered) -> None:
    # postmap -c reads main.cf like every daemon at start: a refused value is fatal
    result = run(POSTMAP, "-c", str(rendered.dir), "-q", "probe", "static:ok")
    assert (result.returncode, result.stdout, result.stderr) == (0, "ok\n", "")


def expected_parameters(rendered: Rendered) -> dict[str, str]:
    config, layout = rendered.config, rendered.layout
    dkim = "" if config.is_ipv4 else "unix:opendkim/opendkim.sock"
    return {
        "mydestination": config.address_domain,
        "myorigin": config.address_domain,
        "local_recipient_maps": "",
        "recipient_delimiter": "+",
        "allow_percent_hack": "no",
        "swap_bangpath": "no",
        "strict_rfc821_envelopes": "yes",
        "disable_vrfy_command": "no",
        # behind the public listeners: room for what the relay adds (doc/message-size.md)
        "message_size_limit": str(config.inner_message_size_limit),
        "smtpd_recipient_limit": "1000",
        "maximal_queue_lifetime": "2d",
        # deferred mail is tried again after 30 s (chat speed), not 300 s
        "queue_run_delay": "30s",
        "minimal_backoff_time": "30s",
        "inet_protocols": "ipv4" if config.disable_ipv6 else "all",
        "smtpd_peername_lookup": "no",
        "smtpd_client_port_logging": "no",
        "disable_mime_input_processing": "yes",
        "smtpd_tls_cert_file": str(layout.tls.cert),
        "smtpd_tls_key_file": str(layout.tls.key),
        "smtpd_tls_security_level": "encrypt",
        "smtpd_tls_mandatory_protocols": ">=TLSv1.2",
        "smtpd_tls_auth_only": "yes",
        "smtpd_sasl_auth_enable": "no",
        "smtpd_sasl_type": "dovecot",
        "smtpd_sasl_path": "private/auth",
        "smtpd_relay_restrictions": "reject",
        "smtpd_sender_login_maps": f"regexp:{rendered.dir}/login_map",
        "local_transport": "lmtp:unix:private/dovecot-lmtp",
        "lmtp_header_checks": f"regexp:{rendered.dir}/lmtp_header_cleanup",
        "default_transport": "filtermail-transport:inet:"
        + ("[::1]" if config.filtermail_host == "::1" else "127.0.0.1")
        + f":{config.filtermail_lmtp_port_transport}",
        "filtermail-transport_destination_concurrency_limit": "100",
        "relayhost": "",
        "smtp_tls_security_level": "verify",
        "smtp_tls_policy_maps": f"regexp:{rendered.dir}/tls_policy",
        "smtp_tls_mandatory_protocols": ">=TLSv1.2",
        "smtp_tls_protocols": ">=TLSv1.2",
        "smtp_tls_servername": "hostname",
        "non_smtpd_milters": dkim,
        "internal_mail_filter_classes": "bounce" if dkim else "",
        "milter_macro_daemon_name": "ORIGINATING" if dkim else "$myhostname",
    }


@needs_postfix
def test_main_cf_parameters(rendered: Rendered) -> None:
    expected = expected_parameters(rendered)
    actual = {}
    for line in postconf(rendered.dir, *expected).splitlines():
        name, _, value = line.partition(" =")  # "name =" when empty
        actual[name] = value.removeprefix(" ")
    assert actual == expected


@needs_postfix
@pytest.mark.parametrize(
    ("params", "myhostname", "expected"),
    [
        (CONFIGS["acme"], None, "chat.example.org"),
        (CONFIGS["self"], None, "_chat.example.org"),
        (CONFIGS["ipv4"], "host-10.example.net.", "host-10.example.net"),
    ],
)
def test_myhostname(
    tmp_path: Path, params: dict[str, str], myhostname: str | None, expected: str
) -> None:
    rendered = render(tmp_path, params, myhostname)
    assert postconf(rendered.dir, "-h", "myhostname") == f"{expected}\n"


@needs_postfix
def test_ipv4_relay_without_ptr_name_leaves_myhostname_to_postfix(tmp_path: Path) -> None:
    rendered = render(tmp_path, CONFIGS["ipv4"])
    assert not re.search(r"^myhostname =", postconf(rendered.dir, "-n"), re.MULTILINE)


@needs_postfix
def test_mynetworks_is_loopback_plus_a_non_loopback_reinjection_address(tmp_path: Path) -> None:
    for name, expected in [
        ("acme", "127.0.0.0/8 [::1]/128"),
        ("no-ipv6", "127.0.0.0/8"),
        ("custom", "127.0.0.0/8 [::1]/128 10.0.0.5/32"),
    ]:
        conf_dir = tmp_path / name
        conf_dir.mkdir()
        assert postconf(render(conf_dir, CONFIGS[name]).dir, "-h", "mynetworks") == f"{expected}\n"


# --- master.cf -----------------------------------------------------------------------------


@dataclass
class Service:
    private: str
    unpriv: str
    chroot: str
    wakeup: str
    maxproc: str
    command: str


def services(conf_dir: Path) -> dict[str, Service]:
    """`postconf -M`: {"name/type": entry}."""
    entries = {}
    for line in postconf(conf_dir, "-M").splitlines():
        name, kind, private, unpriv, chroot, wakeup, maxproc, command, *_ = line.split()
        entries[f"{name}/{kind}"] = Service(private, unpriv, chroot, wakeup, maxproc, command)
    return entries


def service_parameters(conf_dir: Path) -> dict[str, str]:
    """`postconf -P`: {"name/type/parameter": value} of every -o in master.cf."""
    parameters = {}
    for line in postconf(conf_dir, "-P").splitlines():
        name, _, value = line.partition(" =")  # "name =" when the value is empty
        parameters[name] = value.removeprefix(" ")
    return parameters


POSTFIX_INTERNAL = [
    "pickup/unix", "cleanup/unix", "qmgr/unix", "tlsmgr/unix", "rewrite/unix", "bounce/unix",
    "defer/unix", "trace/unix", "verify/unix", "flush/unix", "proxymap/unix",
    "proxywrite/unix", "smtp/unix", "relay/unix", "showq/unix", "error/unix", "retry/unix",
    "discard/unix", "lmtp/unix", "anvil/unix", "scache/unix", "postlog/unix-dgram",
]  # fmt: skip


@needs_postfix
def test_master_cf_has_every_listener_and_service(rendered: Rendered) -> None:
    config = rendered.config
    reinject_host = "10.0.0.5" if config.postfix_host == "10.0.0.5" else "127.0.0.1"
    entries = services(rendered.dir)
    assert set(entries) == {
        "smtp/inet",
        "submission/inet",
        "smtps/inet",
        f"{reinject_host}:{config.postfix_reinject_port}/inet",
        f"{reinject_host}:{config.postfix_reinject_port_incoming}/inet",
        f"{reinject_host}:{config.postfix_reinject_port_smtp}/inet",
        "authclean/unix",
        "filtermail-transport/unix",
        *POSTFIX_INTERNAL,
    }
    assert {e.chroot for e in entries.values()} == {"n"}
    for name in ("smtp/inet", "submission/inet", "smtps/inet"):
        assert entries[name].command == "smtpd"
    for name in ("submission/inet", "smtps/inet"):
        assert entries[name].maxproc == str(config.max_smtp_connections)
    assert entries["authclean/unix"].command == "cleanup"
    assert entries["filtermail-transport/unix"].command == "lmtp"


@needs_postfix
def test_master_cf_wires_filters_and_reinjection(rendered: Rendered) -> None:
    config = rendered.config
    filtermail = "[::1]" if config.filtermail_host == "::1" else "127.0.0.1"
    reinject = "10.0.0.5" if config.postfix_host == "10.0.0.5" else "127.0.0.1"
    out_listener = f"{reinject}:{config.postfix_reinject_port}/inet"
    in_listener = f"{reinject}:{config.postfix_reinject_port_incoming}/inet"
    smtp_listener = f"{reinject}:{config.postfix_reinject_port_smtp}/inet"
    submission = {
        "smtpd_tls_security_level": "encrypt",
        "smtpd_tls_mandatory_protocols": ">=TLSv1.3",
        "smtpd_sasl_auth_enable": "yes",
        "smtpd_client_restrictions": "$mua_client_restrictions",
        "smtpd_helo_restrictions": "$mua_helo_restrictions",
        "smtpd_sender_restrictions": "$mua_sender_restrictions",
        "smtpd_relay_restrictions": "permit_sasl_authenticated,reject",
        "smtpd_client_connection_count_limit": str(max(1, config.max_smtp_connections // 5)),
        "message_size_limit": str(config.max_message_size),
        # the outgoing gate as the milter, after the header cleanup (doc/milter.md §3)
        "smtpd_milters": f"unix:{rendered.layout.gate_socket}",
        # a gate that cannot answer costs a temporary error, never a message
        "milter_default_action": "tempfail",
        "cleanup_service_name": "authclean",
        **{f"milter_{stage}_macros": "" for stage in MILTER_STAGES},
    }
    expected = {
        "smtp/inet": {
            "smtpd_tls_security_level": "encrypt",
            "smtpd_relay_restrictions": "reject_unauth_destination",
            "smtpd_proxy_filter": f"{filtermail}:{config.filtermail_smtp_port_incoming}",
            "message_size_limit": str(config.max_message_size),
        },
        "submission/inet": {**submission, "syslog_name": "postfix/submission"},
        "smtps/inet": {
            **submission,
            "syslog_name": "postfix/smtps",
            "smtpd_tls_wrappermode": "yes",
        },
        out_listener: {
            "syslog_name": "postfix/reinject",
            "smtpd_tls_security_level": "none",
            "smtpd_client_restrictions": "permit_mynetworks,reject",
            "smtpd_relay_restrictions": "permit_mynetworks,reject",
            "cleanup_service_name": "authclean",
            **({} if config.is_ipv4 else {"smtpd_milters": "unix:opendkim/opendkim.sock"}),
        },
        in_listener: {
            "syslog_name": "postfix/reinject_incoming",
            "smtpd_tls_security_level": "none",
            "smtpd_client_restrictions": "permit_mynetworks,reject",
            "smtpd_relay_restrictions": "reject_unauth_destination",
        },
        smtp_listener: {
            "syslog_name": "postfix/reinject_smtp",
            "smtpd_tls_security_level": "none",
            "smtpd_client_restrictions": "permit_mynetworks,reject",
            "smtpd_relay_restrictions": "permit_mynetworks,reject",
            # leaves by SMTP, as it came: signed already
            "content_filter": "smtp:",
            "receive_override_options": "no_header_body_checks,no_milters,no_address_mappings",
        },
        "filtermail-transport/unix": {
            "syslog_name": "postfix/transport",
            # nothing of the signed message is removed on its way to the peer
            "lmtp_header_checks": "",
        },
        "authclean/unix": {
            "header_checks": f"regexp:{rendered.dir}/submission_header_cleanup",
        },
        "relay/unix": {"syslog_name": "postfix/$service_name"},
    }
    actual: dict[str, dict[str, str]] = {}
    for key, value in service_parameters(rendered.dir).items():
        service, parameter = key.rsplit("/", 1)
        actual.setdefault(service, {})[parameter] = value
    assert actual == expected


@needs_postfix
def test_mua_restrictions_require_login_and_own_sender_address(rendered: Rendered) -> None:
    out = postconf(rendered.dir, "-h", "mua_client_restrictions", "mua_sender_restrictions")
    assert out.splitlines() == [
        "permit_sasl_authenticated, reject",
        "reject_sender_login_mismatch, permit_sasl_authenticated, reject",
    ]


# --- lookup tables -------------------------------------------------------------------------

# Exactly the replacement is left alone, so REPLACE logs no line for it (issue 13); anything
# else that could show differently, in case, spacing or a folded second line, is replaced.
SUBJECT_ALREADY_REPLACED = [
    ("Subject: [...]", None),
    ("subject: [...]", "REPLACE Subject: [...]"),
    ("Subject: [...] ", "REPLACE Subject: [...]"),
    ("Subject:  [...]", "REPLACE Subject: [...]"),
    ("Subject: [...]x", "REPLACE Subject: [...]"),
    ("Subject: [...]\n\tthe meeting", "REPLACE Subject: [...]"),
    ("X-Subject: [...]", None),
]


@needs_postfix
@pytest.mark.parametrize(
    ("header", "action"),
    [
        ("Subject: Meeting at 5", "REPLACE Subject: [...]"),
        ("subject: lower case too", "REPLACE Subject: [...]"),
        *SUBJECT_ALREADY_REPLACED,
        ("Received: from [198.51.100.7] by chat.example.org", "IGNORE"),
        ("X-Originating-IP: [198.51.100.7]", "IGNORE"),
        ("X-Mailer: Delta Chat 1.50", "IGNORE"),
        ("User-Agent: Thunderbird", "IGNORE"),
        ("From: <alice@chat.example.org>", None),
        ("Autocrypt: addr=alice@chat.example.org; keydata=xsBN", None),
        ('Content-Type: multipart/encrypted; protocol="application/pgp-encrypted"', None),
        ("X-Subject: not the subject", None),
        # the gate reads an Autocrypt Setup Message's Subject after these rules: kept in every
        # spelling the gate could take for it (doc/encryption-gate.md §2.4), no other
        ("Subject: Autocrypt Setup Message", None),
        ("Subject:Autocrypt Setup Message ", None),
        ("Subject: Autocrypt\n Setup Message", None),
        ("subject: Autocrypt Setup Message", None),  # the gate reads names in any case
        ("SUBJECT: Autocrypt Setup Message", None),
        ("Subject: Re: Autocrypt Setup Message", "REPLACE Subject: [...]"),
        ("Subject: Autocrypt Setup Message, and my plans", "REPLACE Subject: [...]"),
    ],
)
def test_submission_header_cleanup(tmp_path: Path, header: str, action: str | None) -> None:
    conf_dir = render(tmp_path, CONFIGS["acme"]).dir
    assert lookup(conf_dir, "submission_header_cleanup", header) == action


@needs_postfix
@pytest.mark.parametrize(
    ("header", "action"),
    [
        ("DKIM-Signature: v=1; a=rsa-sha256; d=example.org; s=sel", "IGNORE"),
        ("Authentication-Results: chat.example.org; dkim=pass", "IGNORE"),
        ("Received: from peer.example.org", "IGNORE"),
        # a client shows it when decryption fails: cleartext in the chat
        ("Subject: Buy cheap pills now", "REPLACE Subject: [...]"),
        *SUBJECT_ALREADY_REPLACED,
        ("From: <bob@example.org>", None),
        ("Chat-Version: 1.0", None),
    ],
)
def test_lmtp_header_cleanup(tmp_path: Path, header: str, action: str | None) -> None:
    conf_dir = render(tmp_path, CONFIGS["acme"]).dir
    assert lookup(conf_dir, "lmtp_header_cleanup", header) == action


@needs_postfix
@pytest.mark.parametrize(
    "address", ["alice@chat.example.org", "bob+tag@_chat.example.org", "carol@[192.0.2.10]"]
)
def test_login_map_makes_every_address_its_own_owner(tmp_path: Path, address: str) -> None:
    conf_dir = render(tmp_path, CONFIGS["acme"]).dir
    assert lookup(conf_dir, "login_map", address) == address


@needs_postfix
@pytest.mark.parametrize(
    ("next_hop", "policy"),
    [
        ("[192.0.2.10]", "encrypt"),
        ("[192.0.2.10]:2525", "encrypt"),
        ("[ipv6:2001:db8::1]", "encrypt"),
        ("_chat.example.org", "encrypt"),
        ("_x.example", "encrypt"),
        ("nauta.cu", "may"),
        # everything else keeps smtp_tls_security_level = verify
        ("example.org", None),
        ("chat_x.example.org", None),
        ("nauta.cu.example.org", None),
        ("[mx.example.org]", None),
    ],
)
def test_tls_policy_exceptions(tmp_path: Path, next_hop: str, policy: str | None) -> None:
    conf_dir = render(tmp_path, CONFIGS["acme"]).dir
    assert lookup(conf_dir, "tls_policy", next_hop) == policy


# --- logging through chatmail-postlog ----------------------------------------

DEBIAN_POSTFIX_UNIT = Path("/lib/systemd/system/postfix@.service")


def test_postfix_logs_into_the_scrubber_socket(tmp_path: Path) -> None:
    rendered = render(tmp_path, CONFIGS["acme"])
    drop_in = rendered.files[str(tmp_path / "systemd" / "postfix@.service.d/chatmail-postlog.conf")]
    # /dev/log is a symlink to journald's syslog socket; in Postfix's namespace that socket is
    # the scrubber's. This holds for every daemon only because none runs chrooted (a chrooted
    # one would look for <spool>/dev/log): test_master_cf_has_every_listener_and_service.
    assert "BindPaths=/run/chatmail-postlog/dev-log:/run/systemd/journal/dev-log\n" in drop_in
    assert "Requires=chatmail-postlog.socket\n" in drop_in
    assert "After=chatmail-postlog.socket\n" in drop_in


def test_systemd_watches_the_master_and_starts_it_again(tmp_path: Path) -> None:
    rendered = render(tmp_path, CONFIGS["acme"])
    drop_in = rendered.files[str(tmp_path / "systemd" / "postfix@.service.d/chatmail-restart.conf")]
    assert "Restart=on-failure\n" in drop_in
    assert f"PIDFile={MASTER_PID_FILE}\n" in drop_in
    # the master writes its pid under its queue directory: Debian's, unless main.cf moves it
    assert "queue_directory" not in rendered.files[str(tmp_path / "main.cf")]
    if POSTCONF is not None:
        default = subprocess.run(
            [POSTCONF, "-dh", "queue_directory"], capture_output=True, text=True, check=True
        ).stdout.strip()
        assert MASTER_PID_FILE == f"{default}/pid/master.pid"


@pytest.mark.skipif(
    shutil.which("systemd-analyze") is None or not DEBIAN_POSTFIX_UNIT.exists(),
    reason="needs systemd and Debian's postfix package",
)
def test_systemd_analyze_verifies_postfix_with_the_drop_in(tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    (lib / "venv" / "bin").mkdir(parents=True)
    script = lib / "venv" / "bin" / "chatmail-postlog"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    layout = Layout(
        Config.from_params({"mail_domain": "chat.example.org"}), lib_dir=PurePosixPath(lib)
    )
    units = tmp_path / "systemd"
    files = postfix_files(layout, config_dir=PurePosixPath(tmp_path), unit_dir=PurePosixPath(units))
    files |= {
        str(units / PurePosixPath(path).name): text
        for path, text in chatmaild_files(layout).items()
        if "chatmail-postlog" in path
    }
    for name, content in files.items():
        Path(name).parent.mkdir(parents=True, exist_ok=True)
        Path(name).write_text(content, encoding="utf-8")
    shutil.copy(DEBIAN_POSTFIX_UNIT, units)
    result = subprocess.run(
        ["systemd-analyze", "verify", str(units / "postfix@-.service")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    # systemd-analyze also reports on units it pulls in from the host; only ours matter
    ours = [line for line in result.stderr.splitlines() if str(tmp_path) in line]
    assert ours == [], result.stderr
