"""The relay's configuration: `chatmail.ini`, section `[params]` (doc/config.md).

One frozen, typed model. Every field carries its default and a one-line doc; the commented
example ini that `cmdeploy init` writes is generated from the same fields, so the two cannot
drift. Bad values raise `ConfigError` naming file, key, value and what was expected.
"""

from __future__ import annotations

import configparser
import dataclasses
import ipaddress
import logging
import re
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SECTION = "params"
DEFAULT_INI_PATH = Path("/usr/local/lib/chatmaild/chatmail.ini")

# Room for what the relay itself adds to a message after its sender's bytes were counted
# against max_message_size at a public door (doc/message-size.md): Received and
# DKIM-Signature headers, and the envelope Postfix counts into a queue file's size (up to
# 1000 recipients of up to 254 bytes, each written twice).
HEADER_HEADROOM = 2**20

# Keys older relays used and that have no effect here: reading them warns, nothing else.
# mtail_address: no mtail runs; turn_socket_path: TURN credentials come from
# turn_secret_file; passdb_path: there is no sqlite password database to migrate from.
OBSOLETE_KEYS = frozenset(
    {
        "passthrough_senders",
        "passthrough_recipients",
        "mtail_address",
        "turn_socket_path",
        "passdb_path",
        # the outgoing gate is a milter on a UNIX socket since issue 13, and mail for local
        # users only is queued in that one pass (doc/milter.md)
        "filtermail_smtp_port",
        "postfix_reinject_port_local",
    }
)


class ConfigError(Exception):
    """A value in the ini is missing or not of the expected form."""

    def __init__(self, path: Path | str, key: str, value: str | None, expected: str) -> None:
        self.path = str(path)
        self.key = key
        self.value = value
        self.expected = expected
        shown = "missing" if value is None else f"{key} = {value!r}"
        super().__init__(f"{self.path}: [{SECTION}] {shown}: expected {expected}")


# --- value parsers: each takes the raw string and returns the typed value or raises ValueError
# with the "expected ..." text.

_SIZE_RE = re.compile(r"^\s*(\d+)\s*([kmgt]?)b?\s*$", re.IGNORECASE)
_SIZE_FACTORS = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}
_LABEL_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


def parse_size(raw: str) -> int:
    """`500M`, `2G`, `1GB`, `31457280` -> bytes (binary multiples, as Dovecot counts)."""
    m = _SIZE_RE.match(raw)
    if not m:
        raise ValueError("a size such as 31457280, 500M or 2G")
    return int(m.group(1)) * _SIZE_FACTORS[m.group(2).lower()]


def parse_count(raw: str) -> int:
    try:
        value = int(raw.strip())
    except ValueError:
        raise ValueError("a whole number, 0 or more") from None
    if value < 0:
        raise ValueError("a whole number, 0 or more")
    return value


def parse_port(raw: str) -> int:
    value = parse_count(raw) if raw.strip().isdigit() else -1
    if not 1 <= value <= 65535:
        raise ValueError("a TCP port number from 1 to 65535")
    return value


def parse_float(raw: str) -> float:
    try:
        value = float(raw.strip())
    except ValueError:
        raise ValueError("a number, 0 or more") from None
    if not value >= 0:  # also refuses nan
        raise ValueError("a number, 0 or more")
    return value


def parse_bool(raw: str) -> bool:
    text = raw.strip().lower()
    if text in ("true", "yes", "on", "1"):
        return True
    if text in ("false", "no", "off", "0", ""):
        return False
    raise ValueError("true or false")


def parse_text(raw: str) -> str:
    return raw.strip()


def parse_url(raw: str) -> str:
    text = raw.strip()
    if not re.match(r"^https?://[^/\s]+", text):
        raise ValueError("an http:// or https:// URL")
    return text


def is_https_url(text: str) -> bool:
    """An https URL with a host and no white space (RFC 3986 §3)."""
    try:
        url = urllib.parse.urlsplit(text)
        ok = url.scheme == "https" and bool(url.hostname) and url.port != 0
    except ValueError:  # e.g. an unclosed IPv6 bracket or a port out of range
        return False
    return ok and not any(ch.isspace() for ch in text)


def parse_https_url_or_empty(raw: str) -> str:
    """Nothing, or an https URL: what an iroh relay is reached by."""
    text = raw.strip()
    if text and not is_https_url(text):
        raise ValueError("an https:// URL such as https://iroh.example.org, or nothing")
    return text


REGISTRATION_MODES = ("open", "invite", "closed")


def parse_registration(raw: str) -> str:
    value = raw.strip()
    if value not in REGISTRATION_MODES:
        raise ValueError(", ".join(REGISTRATION_MODES[:-1]) + " or " + REGISTRATION_MODES[-1])
    return value


def parse_ip_list(raw: str) -> str:
    addresses = raw.split()
    try:
        for address in addresses:
            ipaddress.ip_address(address)
    except ValueError:
        raise ValueError("IP addresses separated by spaces") from None
    return " ".join(addresses)


def parse_mail_domain(raw: str) -> str:
    """A DNS name (optionally starting with `_` for self-signed TLS) or an IPv4 address."""
    text = raw.strip().lower().rstrip(".")
    try:
        ipaddress.IPv4Address(text)
        return text
    except ValueError:
        pass
    labels = text.split(".")
    first = labels[0][1:] if labels[0].startswith("_") else labels[0]
    if (
        len(text) <= 253
        and len(labels) >= 2
        and all(_LABEL_RE.match(label) for label in [first, *labels[1:]])
        and not labels[-1].isdigit()
    ):
        return text
    raise ValueError("a domain name such as chat.example.org, or an IPv4 address")


def _param(default: Any, parse: Callable[[str], Any], doc: str, example: str | None = None) -> Any:
    """Declare one ini key: its default, how to parse it, and the doc line the ini shows."""
    return field(default=default, metadata={"parse": parse, "doc": doc, "example": example})


@dataclass(frozen=True)
class Config:
    """The typed content of `[params]`. Build it with `read_config` or `Config.from_params`."""

    mail_domain: str = field(
        metadata={
            "parse": parse_mail_domain,
            "doc": "The relay's domain: addresses are user@<mail_domain>. "
            "A leading '_' or an IPv4 address gives a self-signed certificate.",
            "example": None,
        }
    )
    max_user_send_per_minute: int = _param(
        60, parse_count, "Messages a user may send per minute on average (rate limit)."
    )
    max_user_send_burst_size: int = _param(
        10, parse_count, "Messages a user may send at once before the rate limit applies."
    )
    max_mailbox_size: int = _param(
        500 * 2**20, parse_size, "Mailbox quota; the oldest mail is removed when it fills.", "500M"
    )
    max_message_size: int = _param(
        31457280,
        parse_size,
        "Largest message in bytes a client or peer may send; announced as SMTP SIZE and IMAP "
        "APPENDLIMIT and enforced at every door (doc/message-size.md).",
    )
    delete_mails_after: int = _param(20, parse_count, "Days after which any message is deleted.")
    delete_large_after: int = _param(
        7, parse_count, "Days after which seen messages over 200000 bytes are deleted."
    )
    delete_inactive_users_after: int = _param(
        90, parse_count, "Days without a login after which an account is deleted."
    )
    username_min_length: int = _param(
        9, parse_count, "Shortest local part allowed when an account is created."
    )
    username_max_length: int = _param(
        9, parse_count, "Longest local part allowed at creation; /new generates this many."
    )
    password_min_length: int = _param(
        9, parse_count, "Shortest password allowed at creation; /new generates 3 more."
    )
    registration: str = _param(
        "open",
        parse_registration,
        "Who may create an account: open (anyone), invite (only with an invite from "
        "`cmdeploy invite`), closed (nobody). `cmdeploy registration` overrides it at run time "
        "(doc/accounts.md).",
    )
    refuse_autorelay: bool = _param(
        False,
        parse_bool,
        "Refuse first logins with a password of exactly 23 characters, the mark of accounts "
        "Delta Chat creates on relays the user did not choose ('autorelay'), in any mode. "
        "`cmdeploy registration` overrides it at run time.",
    )
    registration_dir: str = _param(
        "/var/lib/chatmail/registration",
        parse_text,
        "Where the run-time registration state lives: the mode set by `cmdeploy registration`, "
        "invites, and the addresses /new handed out for them.",
    )
    www_folder: str = _param(
        "",
        parse_text,
        "Empty: the bundled web pages. A directory: its pages (built if it holds src/). "
        "A path that does not exist: no website.",
    )
    filtermail_smtp_port_incoming: int = _param(
        10081, parse_port, "Loopback port of the incoming encryption filter (SMTP)."
    )
    filtermail_http_port_incoming: int = _param(
        10082, parse_port, "Loopback port of the incoming filter for /mxdeliv (HTTP)."
    )
    filtermail_lmtp_port_transport: int = _param(
        10083, parse_port, "Loopback port of the transport that delivers to peers (LMTP)."
    )
    postfix_reinject_port: int = _param(
        10025, parse_port, "Loopback port where filtered outgoing mail re-enters Postfix."
    )
    postfix_reinject_port_incoming: int = _param(
        10026, parse_port, "Loopback port where filtered incoming mail re-enters Postfix."
    )
    postfix_reinject_port_smtp: int = _param(
        10027,
        parse_port,
        "Loopback port where mail for peers without /mxdeliv re-enters Postfix, to leave by SMTP.",
    )
    disable_ipv6: bool = _param(False, parse_bool, "Listen on IPv4 only.")
    acme_email: str = _param("", parse_text, "E-mail address for the ACME (Let's Encrypt) account.")
    acme_directory_url: str = _param(
        "https://acme-v02.api.letsencrypt.org/directory",
        parse_url,
        "ACME directory the certificate is requested from (a test CA in the lab).",
    )
    dns_forwarders: str = _param(
        "",
        parse_ip_list,
        "Space-separated resolver IPs for the relay's unbound to forward to; empty: "
        "resolve from the root servers.",
    )
    imap_rawlog: bool = _param(False, parse_bool, "Write raw IMAP traffic logs into each home.")
    imap_compress: bool = _param(
        False, parse_bool, "Offer IMAP COMPRESS (turns off hibernation of idle connections)."
    )
    turn_secret_file: str = _param(
        "/etc/chatmail/turn-secret",
        parse_text,
        "File holding the secret shared with coturn; TURN credentials are derived from it.",
    )
    push_endpoint: str = _param(
        "https://notifications.delta.chat/notify",
        parse_url,
        "Where push notifications are POSTed (the Delta Chat notification service).",
    )
    iroh_relay: str = _param(
        "",
        parse_https_url_or_empty,
        "An https URL: the iroh relay announced to Delta Chat for realtime apps. Empty: none "
        "is announced (the deploy runs no iroh relay).",
    )
    appversions_file: str = _param(
        "",
        parse_text,
        "Empty: the app-update catalogue bundled with chatmaild. A path: a JSON file of the same "
        "shape (doc/metadata.md), read again whenever it changes.",
    )
    privacy_postal: str = _param("", parse_text, "Postal address for the privacy policy page.")
    privacy_mail: str = _param(
        "", parse_text, "Contact e-mail for the privacy policy; also the IMAP server admin."
    )
    privacy_pdo: str = _param("", parse_text, "Data protection officer for the privacy page.")
    privacy_supervisor: str = _param("", parse_text, "Supervisory authority for the privacy page.")
    max_load_1m: float = _param(
        5.0, parse_float, "Account creation pauses while the 1-minute load is above this."
    )
    min_available_memory: int = _param(
        200 * 2**20,
        parse_size,
        "Account creation pauses while less memory than this is available.",
        "200M",
    )
    min_free_disk_space: int = _param(
        2**30,
        parse_size,
        "Account creation pauses while the mailbox disk has less free space than this.",
        "1G",
    )
    max_imap_connections: int = _param(10000, parse_count, "Most IMAP processes at once.")
    max_smtp_connections: int = _param(
        1000, parse_count, "Most submission connections at once; a fifth of it per client IP."
    )
    tls_external_cert_and_key: str = _param(
        "",
        parse_text,
        "'CERT KEY': paths on the server of a certificate and key to use instead of ACME.",
    )
    mailboxes_dir: str = _param(
        "", parse_text, "Where mailboxes live; default /home/vmail/mail/<mail_domain>."
    )
    filtermail_host: str = _param("127.0.0.1", parse_text, "Address the filter listens on.")
    postfix_host: str = _param(
        "127.0.0.1", parse_text, "Address where the filter re-injects mail into Postfix."
    )

    # --- derived values -------------------------------------------------------------------

    @property
    def is_ipv4(self) -> bool:
        try:
            ipaddress.IPv4Address(self.mail_domain)
        except ValueError:
            return False
        return True

    @property
    def address_domain(self) -> str:
        """The part after '@' in the relay's addresses: `[a.b.c.d]` for an IPv4 relay."""
        return f"[{self.mail_domain}]" if self.is_ipv4 else self.mail_domain

    @property
    def tls_mode(self) -> str:
        """`external`, `self` or `acme`: the first rule of doc/contract.md §6.1 that applies."""
        if self.tls_external_cert_and_key:
            return "external"
        if self.mail_domain.startswith("_") or self.is_ipv4:
            return "self"
        return "acme"

    @property
    def inner_message_size_limit(self) -> int:
        """The limit behind the public doors: max_message_size and HEADER_HEADROOM."""
        return self.max_message_size + HEADER_HEADROOM

    @property
    def registration_path(self) -> Path:
        return Path(self.registration_dir)

    @property
    def mailboxes_path(self) -> Path:
        return Path(self.mailboxes_dir or f"/home/vmail/mail/{self.mail_domain}")

    # --- construction ---------------------------------------------------------------------

    @classmethod
    def from_params(cls, params: Mapping[str, str], path: Path | str = "<params>") -> Config:
        """Parse raw ini values; unknown keys are ignored here (see `unknown_keys`)."""
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            raw = params.get(f.name)
            if raw is None:
                if f.default is dataclasses.MISSING:
                    raise ConfigError(path, f.name, None, f"a value for {f.name}")
                continue
            try:
                values[f.name] = f.metadata["parse"](raw)
            except ValueError as e:
                raise ConfigError(path, f.name, raw, str(e)) from None
        config = cls(**values)
        config._check_consistency(path)
        return config

    def _check_consistency(self, path: Path | str) -> None:
        if self.username_min_length > self.username_max_length:
            raise ConfigError(
                path,
                "username_min_length",
                str(self.username_min_length),
                f"at most username_max_length ({self.username_max_length})",
            )
        for key in ("delete_mails_after", "delete_large_after", "delete_inactive_users_after"):
            if getattr(self, key) == 0:
                # 0 days would make the daily expiry delete every message or every account
                raise ConfigError(path, key, "0", "at least 1 day")
        if self.max_message_size == 0:
            # Postfix and Dovecot read 0 as no limit at all, filtermail as none but its headroom
            raise ConfigError(path, "max_message_size", "0", "at least 1 byte")
        if self.username_max_length == 0:
            raise ConfigError(path, "username_max_length", "0", "at least 1")
        if self.tls_external_cert_and_key and len(self.tls_external_cert_and_key.split()) != 2:
            raise ConfigError(
                path,
                "tls_external_cert_and_key",
                self.tls_external_cert_and_key,
                "two paths separated by a space: CERT KEY",
            )


def known_keys() -> list[str]:
    return [f.name for f in dataclasses.fields(Config)]


def unknown_keys(params: Mapping[str, str]) -> list[str]:
    known = set(known_keys())
    return sorted(k for k in params if k not in known)


def read_params(path: Path | str) -> dict[str, str]:
    """The raw `[params]` section; ConfigError if the file is unreadable or malformed."""
    parser = configparser.ConfigParser(interpolation=None)
    try:
        with open(path, encoding="utf-8") as f:
            parser.read_file(f)
    except OSError as e:
        raise ConfigError(path, SECTION, None, f"a readable file ({e.strerror})") from None
    except (configparser.Error, UnicodeDecodeError) as e:
        first_line = str(e).splitlines()[0]
        raise ConfigError(path, SECTION, None, f"ini syntax ({first_line})") from None
    if not parser.has_section(SECTION):
        raise ConfigError(path, SECTION, None, f"a [{SECTION}] section")
    return dict(parser.items(SECTION))


def read_config(path: Path | str) -> Config:
    """Load and check the ini; unknown keys are named in a warning, not an error."""
    params = read_params(path)
    config = Config.from_params(params, path)
    unknown = unknown_keys(params)
    obsolete = [k for k in unknown if k in OBSOLETE_KEYS]
    typos = [k for k in unknown if k not in OBSOLETE_KEYS]
    if typos:
        log.warning("%s: unknown keys in [%s], ignored: %s", path, SECTION, ", ".join(typos))
    if obsolete:
        log.warning("%s: keys no longer used, ignored: %s", path, ", ".join(obsolete))
    return config


def _format_default(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else str(value)


def render_ini(mail_domain: str, overrides: Mapping[str, str] | None = None) -> str:
    """The commented `chatmail.ini` for a new relay, generated from the model's fields.

    `overrides` sets further keys (uncommented), e.g. for a lab relay.
    """
    overrides = dict(overrides or {})
    lines = [
        "# chatmail relay configuration, written by `cmdeploy init`.",
        "# Keys that are commented out hold their default; uncomment a line to change it.",
        "# Sizes accept K, M, G suffixes (binary: 1M = 1048576 bytes).",
        "",
        f"[{SECTION}]",
    ]
    for f in dataclasses.fields(Config):
        lines.append(f"# {f.metadata['doc']}")
        if f.name == "mail_domain":
            lines.append(f"mail_domain = {mail_domain}")
        elif f.name in overrides:
            lines.append(f"{f.name} = {overrides.pop(f.name)}")
        else:
            shown = f.metadata["example"] or _format_default(f.default)
            lines.append(f"# {f.name} = {shown}".rstrip())
        lines.append("")
    for key, value in overrides.items():
        lines.append(f"{key} = {value}")
    return "\n".join(lines).rstrip("\n") + "\n"


def render_reference() -> str:
    """The Markdown reference of every key, generated from the model (doc/config.md)."""
    lines = [
        "# `chatmail.ini` reference",
        "",
        "<!-- generated from chatmaild/src/chatmaild/config.py by"
        " `python -m chatmaild.config > doc/config.md`; a test fails when it drifts -->",
        "",
        f"All keys live in the `[{SECTION}]` section. Only `mail_domain` is required;"
        " `cmdeploy init` writes every other key commented out with its default.",
        "Sizes accept K, M, G suffixes (binary: 1M = 1048576 bytes).",
        "",
        "| Key | Default | Meaning |",
        "|---|---|---|",
    ]
    for f in dataclasses.fields(Config):
        if f.name == "mail_domain":
            default = "required"
        elif f.default is None:
            default = "unset"
        elif f.default == "":
            default = '""'
        else:
            default = f"`{f.metadata['example'] or _format_default(f.default)}`"
        doc = f.metadata["doc"].replace("<", "&lt;").replace(">", "&gt;")
        lines.append(f"| `{f.name}` | {default} | {doc} |")
    lines += [
        "",
        "Keys of older relays that have no effect here; reading one logs a warning naming it:",
        ", ".join(f"`{key}`" for key in sorted(OBSOLETE_KEYS)) + ".",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(render_reference(), end="")
