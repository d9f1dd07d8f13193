"""The backup archive's format (doc/backup.md): member names, the header, the manifest.

An archive is one uncompressed POSIX tar stream (mail is end-to-end encrypted and does not
compress). Its first member is `chatmail-backup.json` (format, domain, creation time), so
that a restore refuses another relay's archive before it writes anything; its last member
is `MANIFEST.jsonl`, one JSON line per member before it in archive order (path, type, size,
mode, mtime, SHA-256), so that the relay can stream the archive in one pass, and a restore
can compare line by line without holding the list in memory. Everything else lives under one
of the `AREAS`, each of which names one place on the relay (`RelayPaths`).

The checksums find a truncated or damaged archive; they do not authenticate it: whoever can
write an archive can write its manifest. That is why every member name is checked against
`member_error` before anything is written, whatever the manifest says.

Pure: no I/O here.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from .accounts import address_error
from .config import Config, parse_mail_domain
from .fsutil import is_temporary_name
from .pushqueue import SPOOL_DIR

FORMAT = 1
HEADER = "chatmail-backup.json"
MANIFEST = "MANIFEST.jsonl"

# areas: a tree (a directory on the relay) or one file
MAILBOXES = "mailboxes"
REGISTRATION = "registration"
DKIM = "dkim"
TREES = (MAILBOXES, REGISTRATION, DKIM)
TURN_SECRET = "turn-secret"  # noqa: S105 (a member name)
TLS_CERT = "tls/cert"
TLS_KEY = "tls/key"
INI = "chatmail.ini"
FILES = (TURN_SECRET, TLS_CERT, TLS_KEY, INI)

# A single-file member (and the header) is a secret, a certificate or a config: never large.
# The restore keeps to this limit, so that a hostile archive cannot fill /etc.
MAX_SMALL_FILE = 1 << 20
MAX_PATH = 1024
# mode bits a restored file may get: no set-id, sticky, or group/other write
MODE_MASK = 0o755

# What an account's home holds that a relay needs to carry on. Left out: Dovecot's index and
# cache files and `maildirsize` (rebuilt from the maildir; written in place, so a copy taken
# while Dovecot runs could be torn) and the lock file.
HOME_FILES = (
    "password",
    "enforceE2EEincoming",
    "blocked",
    "metadata.json",
    "subscriptions",
    "dovecot-uidlist",  # keeps UIDs and UIDVALIDITY: clients do not fetch everything again
    "dovecot-keywords",
)
FOLDER_FILES = ("maildirfolder", "dovecot-uidlist", "dovecot-keywords")
MAILDIR_SUBDIRS = ("new", "cur", "tmp")  # new before cur: messages move new -> cur


class ArchiveError(Exception):
    """The archive is not one this relay may restore; one line, no address in it."""


@dataclass(frozen=True)
class RelayPaths:
    """Where each area lives on a relay."""

    ini: Path
    mailboxes: Path
    registration: Path
    turn_secret: Path
    dkim_dir: Path | None  # None: an IPv4 relay signs nothing
    tls: tuple[Path, Path] | None  # an external certificate and key, else None

    @classmethod
    def from_config(cls, config: Config, ini: Path, dkim_dir: Path | None) -> RelayPaths:
        tls = None
        if config.tls_mode == "external":
            cert, key = config.tls_external_cert_and_key.split()
            tls = (Path(cert), Path(key))
        return cls(
            ini=ini,
            mailboxes=config.mailboxes_path,
            registration=config.registration_path,
            turn_secret=Path(config.turn_secret_file),
            dkim_dir=None if config.is_ipv4 else dkim_dir,
            tls=tls,
        )

    def trees(self) -> dict[str, Path]:
        found = {MAILBOXES: self.mailboxes, REGISTRATION: self.registration}
        if self.dkim_dir is not None:
            found[DKIM] = self.dkim_dir
        return found

    def files(self) -> dict[str, Path]:
        found = {TURN_SECRET: self.turn_secret, INI: self.ini}
        if self.tls is not None:
            found[TLS_CERT], found[TLS_KEY] = self.tls
        return found


@dataclass(frozen=True)
class Entry:
    """One manifest line: a member as written, or as read back."""

    path: str
    kind: str  # "file" or "dir"
    size: int
    mode: int
    mtime: int
    sha256: str  # "" for a directory

    def line(self) -> bytes:
        fields = {
            "path": self.path,
            "type": self.kind,
            "size": self.size,
            "mode": f"{self.mode:04o}",
            "mtime": self.mtime,
            "sha256": self.sha256,
        }
        return json.dumps(fields, sort_keys=True, separators=(",", ":")).encode() + b"\n"


@dataclass(frozen=True)
class Header:
    format: int
    domain: str
    created: int

    def data(self) -> bytes:
        fields = {"format": self.format, "domain": self.domain, "created": self.created}
        return json.dumps(fields, sort_keys=True, separators=(",", ":")).encode() + b"\n"


def parse_header(data: bytes) -> Header:
    try:
        raw = json.loads(data)
        header = Header(int(raw["format"]), str(raw["domain"]), int(raw["created"]))
    except (ValueError, KeyError, TypeError):
        raise ArchiveError(f"{HEADER} is not a backup header") from None
    if header.format != FORMAT:
        raise ArchiveError(f"archive format {header.format}: this relay reads format {FORMAT}")
    if not is_mail_domain(header.domain):
        # it is printed to the operator's terminal: escape sequences or a newline there could
        # rewrite what the terminal shows, so it is not echoed either
        raise ArchiveError(f"{HEADER} names no valid mail domain: not a chatmail backup")
    return header


def is_mail_domain(domain: str) -> bool:
    """Whether `domain` is a mail domain exactly as a relay's config gives it."""
    try:
        return parse_mail_domain(domain) == domain
    except ValueError:
        return False


_BAD_CHARS = re.compile(r"[\x00-\x1f\x7f\\]")


def path_error(path: str) -> str | None:
    """Why `path` cannot name anything inside an area, or None: the attacker's rules."""
    if not path or len(path) > MAX_PATH:
        return "empty or overlong name"
    if path.startswith("/"):
        return "absolute name"
    if _BAD_CHARS.search(path):
        return "control character or backslash in name"
    parts = path.split("/")
    if any(part in ("", ".", "..") for part in parts):
        return "empty, '.' or '..' component in name"
    return None


def member_error(path: str, kind: str, address_domain: str) -> str | None:
    """Why a member `path` of type `kind` may not be restored, or None."""
    reason = path_error(path)
    if reason is not None:
        return reason
    area, _, rest = path.partition("/")
    if path in FILES:
        return None if kind == "file" else "a single-file area that is not a file"
    if area not in TREES:
        return "outside every area"
    if not rest:
        return None if kind == "dir" else "an area that is not a directory"
    first = rest.split("/")[0]
    if is_temporary_name(first):
        return "a temporary file"
    if area == MAILBOXES and first != SPOOL_DIR and address_error(first, address_domain):
        return "a mailbox that is not an account of this domain"
    if area == MAILBOXES and rest == first and kind != "dir":
        return "an account or the push queue that is not a directory"
    return None


def unique_part(name: str) -> str:
    """A maildir file's name without its info (`:2,<flags>`), which renames change."""
    return name.split(":", 1)[0]


def is_message(path: str) -> bool:
    """Whether `path` is a message file in a maildir folder of an account."""
    parts = path.split("/")
    return (
        len(parts) >= 4
        and parts[0] == MAILBOXES
        and parts[1] != SPOOL_DIR
        and parts[-2] in ("new", "cur")
    )


def account_of(path: str) -> str | None:
    """The account directory a `mailboxes/...` path belongs to, or None."""
    parts = path.split("/")
    if len(parts) >= 2 and parts[0] == MAILBOXES and parts[1] != SPOOL_DIR:
        return parts[1]
    return None
