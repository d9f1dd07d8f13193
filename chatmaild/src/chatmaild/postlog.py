"""chatmail-postlog: Postfix's and Dovecot's syslog socket, scrubbed before the journal.

The relay's rule (README "Architecture"): no log line holds an address, password,
token, client IP or message text. Postfix logs envelope addresses, client and peer IPs, HELO
names, SASL logins, message-ids and, for `header_checks` REPLACE, the original header. Postfix
keeps logging with syslog(3), but in the mount namespace of its systemd unit `/dev/log`
(`/run/systemd/journal/dev-log`) is bind-mounted to this service's socket, which systemd
holds (socket activation, fd 3), so lines wait in the socket while this process restarts.
Dovecot's unit gets the same socket: its lines name no account in normal operation, but its
errors do (a delivery that fails names the recipient and the maildir's path, e.g. on a full
disk), and its error texts are not ours to choose.

Where it sits: Postfix's and Dovecot's daemons --syslog datagram--> here --native journal
entry--> journald.

- Input, one syslog datagram per line, as glibc 2.36 sends it (seen on Debian 12):
  `<PRI>Mmm dd hh:mm:ss ident[pid]: message` (RFC 3164 without a host name); the RFC 5424
  form `<PRI>1 TIMESTAMP HOST APP PROCID MSGID SD MSG` is read too.
- Output: journald's native protocol on `/run/systemd/journal/socket`, with PRIORITY,
  SYSLOG_FACILITY, SYSLOG_IDENTIFIER (e.g. `postfix/smtpd`), SYSLOG_PID and MESSAGE as
  explicit fields. Chosen over re-sending a syslog line to journald's dev-log: nothing gets
  parsed twice, and MESSAGE is length-prefixed, so no text in it can pose as another field.
  `journalctl -t postfix/smtpd` works as before; `_SYSTEMD_UNIT` is now this service.
- Never holding Postfix up for long: a line waits at most a second for room in journald's
  queue, and while journald takes none, lines are dropped at once and counted (`Journal`).
  One datagram is in memory at a time.
  While this process is down, Postfix's syslog() waits on a full socket queue until systemd
  has restarted it (`Restart=always`); if the socket unit itself fails, the socket closes and
  glibc drops the lines: mail never stops for logging.

`redact` is pure: queue ids, statuses, DSNs, delays, relay host names, reply codes and reply
texts stay; local parts, IPs, HELO names, SASL logins and header/body contents go.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import re
import socket
import struct
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from .service import NoSocket, systemd_socket

log = logging.getLogger("chatmail-postlog")

HIDDEN = "…"  # stands for a local part, a HELO name, a login or message text
IP = "IP"  # stands for an IPv4 or IPv6 address

# Postfix cuts each record at 2000 characters (msg_syslog(3)): a line that long may end
# inside an address, so its last, possibly partial, word is hidden.
POSTFIX_RECORD_MAX = 2000
# Longer messages are not Postfix's; cutting them first keeps the work per line bounded.
MESSAGE_MAX = 8192

# --- redaction (pure) ------------------------------------------------------------------------

# cleanup(8) logging a header_checks/body_checks action: "<id>: replace: header Subject: <text>
# from <client>; from=<...> ...: <new text>". The text is the message's own.
_CONTENT_START = re.compile(r": (?:header|body|mime-header|nested-header) ")
_CONTENT_END = re.compile(r" from (?:local|[^\s\[]*\[[^\]\s]*\](?::\d+)?);")
_FIELD_NAME = re.compile(r"[!-9;-~]+:")
# smtpd(8) quoting what a client sent where a command belonged (may be message text)
_CLIENT_TEXT = re.compile(
    r"((?:non-SMTP command|improper command pipelining after \S+) from \S+?: ).*"
)
# the SASL login, bracketed or not, and whatever follows it
_SASL = re.compile(r"(\bsasl_(?:username|sender)=).*")
# the HELO name is the last field of smtpd's and cleanup's records; greedy to the last ">",
# so a name holding ">" goes entirely
_HELO = re.compile(r"(\bhelo=<).*>")
_BRACKETED = re.compile(r"<([^<>]*)>")
_UNCLOSED = re.compile(r"<[^<>]+$")
_KEEP_BRACKETED = frozenset({"", "CR", "LF", "CRLF", "NUL"})  # "End data with <CR><LF>..."
# The local part before an "@": a run of quoted strings and characters other than the
# delimiters, starting after a delimiter (each run is tried once: linear time).
_DELIMS = r"\s<>()\[\],;:=@"
_LOCAL_PART = re.compile(rf'(?<![^{_DELIMS}])(?:"[^"]*+"|[^{_DELIMS}])++(?=@)')
# Candidates only; ipaddress decides. Not after a letter, digit or dot (so "IPv6:" stays).
_IPV6 = re.compile(r"(?<![0-9A-Za-z.])[0-9A-Fa-f]*+:[0-9A-Fa-f:.]++(?:%[0-9A-Za-z_.-]+)?")
_IPV4 = re.compile(r"[0-9]{1,3}(?:\.[0-9]{1,3}){3}")
# An IPv6 address with a zone id is never longer; longer heads are not tried, so a long run of
# colons and hex digits costs linear time.
_IP_TEXT_MAX = 128


# Dovecot's session id: random base64, with `:T<n>` for one LMTP transaction; what follows a
# connection through the log. Kept only where the relay's Dovecot config puts it: the prefix
# of a mail process's lines (`mail_log_prefix`) and `session=<...>` of a login line. Anywhere
# else a bracketed word of that shape could be a login name, so it goes like any other.
_SESSION = r"[A-Za-z0-9+/]{16,24}(?::T[0-9]{1,6})?"
_DOVECOT_PREFIX = re.compile(rf"[a-z][a-z-]{{0,30}}<{_SESSION}>: ")
_DOVECOT_SESSION = re.compile(rf"session=<{_SESSION}>")
# An auth process's prefix names the login as typed, before any check: `dict(USER,IP,...)`
# on 2.3, `lua(USER,IP,...)` on 2.4; it may hold no "@" (a password typed into the name
# field). The first field of any `name(a,b...)` goes; a lone pid (`lmtp(123)`) stays.
_DOVECOT_AUTH_USER = re.compile(r"\b([a-z][a-z0-9-]*\()[^,()]*(?=,)")


def redact(message: str, dovecot: bool = False) -> str:
    """`message` (one log message, without the syslog header) with nothing private.
    `dovecot`: the line is Dovecot's, whose bracketed session ids stay."""
    if len(message) > MESSAGE_MAX:
        message = message[:MESSAGE_MAX]
    if len(message) >= POSTFIX_RECORD_MAX:
        message = message[: message.rfind(" ") + 1] + HIDDEN
    # Each step is skipped where its pattern cannot match: every match holds the text tested
    # with `in` (a fast scan in C), so a skipped step would have changed nothing.
    if ": " in message:
        message = _hide_content(message)
    if " command" in message:
        message = _CLIENT_TEXT.sub(lambda m: m[1] + HIDDEN, message)
    if "sasl_" in message:
        message = _SASL.sub(lambda m: m[1] + HIDDEN, message)
    if "helo=<" in message:
        message = _HELO.sub(lambda m: m[1] + HIDDEN + ">", message)
    prefix = ""
    if dovecot and (kept := _DOVECOT_PREFIX.match(message)):
        prefix, message = kept[0], message[kept.end() :]
    if dovecot and "(" in message:
        message = _DOVECOT_AUTH_USER.sub(lambda m: m[1] + HIDDEN, message)
    if "<" in message:
        message = _BRACKETED.sub(_hide_bracketed_session if dovecot else _hide_bracketed, message)
        message = _UNCLOSED.sub("<" + HIDDEN, message)
    if "@" in message:
        message = _LOCAL_PART.sub(HIDDEN, message)
    if ":" in message:
        message = _IPV6.sub(_hide_ipv6, message)
    if "." in message:
        message = _IPV4.sub(IP, message)
    # an address that was next to "@" ("::@") leaves a placeholder that reads as a local part
    if "@" in message:
        message = _LOCAL_PART.sub(HIDDEN, message)
    return prefix + message


def _hide_content(message: str) -> str:
    start = _CONTENT_START.search(message)
    if start is None:
        return message
    head, rest = message[: start.end()], message[start.end() :]
    name = _FIELD_NAME.match(rest)
    keep = name[0] + " " if name else ""
    ends = list(_CONTENT_END.finditer(rest))  # the last one: the content may mimic it
    tail = rest[ends[-1].start() :] if ends else ""
    return f"{head}{keep}{HIDDEN}{tail}"


def _hide_bracketed(match: re.Match[str]) -> str:
    inner = match[1]
    if inner in _KEEP_BRACKETED:
        return match[0]
    at = inner.rfind("@")
    return f"<{HIDDEN}{inner[at:] if at >= 0 else ''}>"


def _hide_bracketed_session(match: re.Match[str]) -> str:
    start = match.start() - len("session=")
    if start >= 0 and _DOVECOT_SESSION.fullmatch(match.string, start, match.end()):
        return match[0]
    return _hide_bracketed(match)


def _hide_ipv6(match: re.Match[str]) -> str:
    text = match[0]
    # the end of a sentence first: a zone id ("fe80::1%eth0.") may end in a dot
    core = text.rstrip(".")
    if _is_ip(core):
        return IP + text[len(core) :]
    # The candidate may run on into a colon, a port or whatever hex follows one, and an
    # address may itself end in colons: "2001:db8:1::: address", "1:2:3:4:5:6:7:8:25",
    # "::1:x". The longest head before a ".", ":" or "%" that is an address goes.
    for end in range(min(len(text), _IP_TEXT_MAX) - 1, 0, -1):
        if text[end] in ".:%" and _is_ip(text[:end]):
            return IP + text[end:]
    return text


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


# --- syslog in, journal out (pure) ---------------------------------------------------------

# RFC 5424 §6.2.1: PRI is facility * 8 + severity, at most 191
_PRI = re.compile(rb"<(\d{1,3})>")
_RFC3164 = re.compile(r"[A-Z][a-z]{2} [ 0-9][0-9] [0-9]{2}:[0-9]{2}:[0-9]{2} ")
_IDENT = r"[A-Za-z0-9_./-]{1,64}"  # Postfix's are like "postfix/submission/smtpd"
_TAG = re.compile(rf"({_IDENT})(?:\[([0-9]{{1,10}})\])?: ")
_RFC5424 = re.compile(rf"1 \S+ \S+ ({_IDENT}|-) ([0-9]{{1,10}}|-) \S+ (?:- )?")
# control characters would make journald store the message as a blob
_CONTROLS = {c: "?" for c in range(32) if chr(c) != "\t"} | {127: "?"}
# the same characters, to find: most lines hold none, and a search is cheaper than translate
_ANY_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
DOVECOT_IDENT = "dovecot"  # every Dovecot process logs through its log process, as "dovecot"
DEFAULT_PRI = 13  # user.notice, as RFC 3164 §4.3.3 assumes for a datagram without PRI


@dataclass(frozen=True)
class Record:
    severity: int
    facility: int
    ident: str | None
    pid: str | None
    message: str


def parse_syslog(data: bytes) -> Record:
    """One datagram as syslog(3) sends it; what cannot be parsed stays in the message."""
    pri, pri_match = DEFAULT_PRI, _PRI.match(data)
    if pri_match and int(pri_match[1]) <= 191:
        pri, data = int(pri_match[1]), data[pri_match.end() :]
    text = data.decode("utf-8", "replace").rstrip("\n\0")
    if _ANY_CONTROL.search(text):
        text = text.translate(_CONTROLS)
    ident = pid = None
    rfc5424 = _RFC5424.match(text)
    if rfc5424:
        text = text[rfc5424.end() :].removeprefix("\ufeff")
        ident = None if rfc5424[1] == "-" else rfc5424[1]
        pid = None if rfc5424[2] == "-" else rfc5424[2]
    else:
        stamp = _RFC3164.match(text)
        if stamp:
            text = text[stamp.end() :]
        tag = _TAG.match(text)
        if tag:
            ident, pid, text = tag[1], tag[2], text[tag.end() :]
    return Record(pri & 7, pri >> 3, ident, pid, text)


def journal_entry(record: Record) -> bytes:
    """The native journal protocol (systemd's JOURNAL_NATIVE_PROTOCOL): KEY=value lines; the
    message in the binary form, a little-endian 64-bit length before the bytes."""
    fields = [f"PRIORITY={record.severity}", f"SYSLOG_FACILITY={record.facility}"]
    if record.ident:
        fields.append(f"SYSLOG_IDENTIFIER={record.ident}")
    if record.pid:
        fields.append(f"SYSLOG_PID={record.pid}")
    message = record.message.encode("utf-8", "replace")
    head = ("\n".join(fields) + "\nMESSAGE\n").encode("ascii")
    return b"".join((head, struct.pack("<Q", len(message)), message, b"\n"))


def scrub(data: bytes) -> bytes:
    """A syslog datagram in, the journal entry of its redacted record out. Never raises:
    should redaction ever fail, the line is replaced, not passed on."""
    try:
        record = parse_syslog(data)
        message = redact(record.message, dovecot=record.ident == DOVECOT_IDENT)
        record = Record(record.severity, record.facility, record.ident, record.pid, message)
    except Exception as e:  # noqa: BLE001 -- a boundary: one line must not stop the others
        record = Record(3, 2, "chatmail-postlog", None, f"line dropped: {type(e).__name__}")
    return journal_entry(record)


# --- the service (I/O) -------------------------------------------------------------------------

JOURNAL_SOCKET = "/run/systemd/journal/socket"
DATAGRAM_MAX = 65536
REPORT_INTERVAL = 60.0  # seconds between reports of dropped lines
JOURNAL_WAIT = 1.0  # seconds a line may wait for room in journald's queue (`Journal`)


class Journal:
    """journald's native socket, connected so that a full queue can be waited for.

    journald takes datagrams from a queue of `net.unix.max_dgram_qlen` entries, 10 by the
    kernel's default (Debian sets no other), and a burst of mail fills that while journald
    waits a few milliseconds for a core: sending without waiting dropped hundreds of lines a
    minute under load. A line therefore waits up to `wait` seconds for room. Should journald
    not take one in that time, it is stuck, and lines are dropped at once until it takes one
    again: a stuck journal holds Postfix up (whose syslog() waits on this process) for one
    `wait` only, and mail never stops for logging."""

    def __init__(self, path: str, wait: float) -> None:
        self.path = path
        self.wait = wait
        self.sock: socket.socket | None = None
        self.stuck = False

    def send(self, entry: bytes) -> bool:
        """Whether journald took the entry."""
        for attempt in range(2):
            try:
                if self.sock is None:
                    self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                    self.sock.connect(self.path)
                timeout = 0.0 if self.stuck else self.wait
                if self.sock.gettimeout() != timeout:  # a system call: only on a change
                    self.sock.settimeout(timeout)
                self.sock.send(entry)
            except (TimeoutError, BlockingIOError):
                self.stuck = True
                return False
            except OSError:  # journald restarted (a new socket at the path) or is not there
                self.close()
                if attempt:
                    return False
                continue
            self.stuck = False
            return True
        return False

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


def serve(
    listen: socket.socket,
    journal: str,
    clock: Callable[[], float] = time.monotonic,
    wait: float = JOURNAL_WAIT,
) -> None:
    """Forever: receive a datagram, scrub it, hand it to journald (`Journal`)."""
    out = Journal(journal, wait)
    dropped, last_report = 0, float("-inf")  # the first drop is reported at once
    while True:
        data = listen.recv(DATAGRAM_MAX)  # a longer datagram is cut: `redact` copes
        if not out.send(scrub(data)):
            dropped += 1
        if dropped and clock() - last_report >= REPORT_INTERVAL:
            log.warning("dropped %d line(s): the journal did not take them", dropped)
            dropped, last_report = 0, clock()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="chatmail-postlog",
        description="Scrub Postfix's syslog lines (socket from systemd) into the journal.",
    )
    parser.add_argument("--journal-socket", default=JOURNAL_SOCKET, help="journald's socket")
    args = parser.parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(name)s: %(message)s")
    try:
        listen = systemd_socket(socket.SOCK_DGRAM)
    except NoSocket as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    log.info("scrubbing Postfix's log lines into %s", args.journal_socket)
    serve(listen, args.journal_socket)


if __name__ == "__main__":
    main()
