"""chatmail-backup: a relay's archive written by the real tool and read back into another
relay's files (doc/backup.md).

Each relay is a directory in tmp_path laid out like a deployed one and filled through the code
paths the services use (Mailboxes.create, TokenStore, PushQueue, InviteStore, Admin.block);
create and restore run as processes, streaming through a pipe as over SSH.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import os
import shutil
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from chatmaild import backupformat as fmt
from chatmaild import registration
from chatmaild import restore as restore_module
from chatmaild.accounts import Mailboxes
from chatmaild.accountsadmin import Admin
from chatmaild.backup import ArchiveWriter, Backup
from chatmaild.backupcmd import ProgressLine, redact
from chatmaild.config import read_config
from chatmaild.pushqueue import SPOOL_DIR, PushQueue
from chatmaild.registration import InviteStore, SettingsReader
from chatmaild.restore import Restore, with_turn_secret
from chatmaild.tokens import TokenStore

DOMAIN = "example.org"
ALICE = "alice0001@example.org"
BOB = "bob000001@example.org"
NOW = 1_800_000_000.0
DAY = 86400
TOKEN = "device-token-" + "x" * 40
PASSWORD = "pass-word-12"


class Relay:
    """One relay's files, as a deploy leaves them."""

    def __init__(self, root: Path, domain: str = DOMAIN) -> None:
        root.mkdir()
        self.root = root
        self.mailboxes = root / "mailboxes"
        self.mailboxes.mkdir(mode=0o700)
        self.registration = root / "registration"
        InviteStore(self.registration).make_dirs()
        self.dkim = root / "dkimkeys"
        self.dkim.mkdir()
        (self.dkim / "opendkim.private").write_bytes(os.urandom(64))
        self.turn = root / "turn-secret"
        self.turn.write_text(os.urandom(16).hex() + "\n")
        self.coturn = root / "turnserver.conf"
        secret = self.turn.read_text().strip()
        self.coturn.write_text(f"realm={domain}\nuse-auth-secret\nstatic-auth-secret={secret}\n")
        self.ini = root / "chatmail.ini"
        self.ini.write_text(
            f"[params]\nmail_domain = {domain}\nmailboxes_dir = {self.mailboxes}\n"
            f"registration_dir = {self.registration}\nturn_secret_file = {self.turn}\n"
        )
        self.config = read_config(self.ini)

    def tool(self, action: str, *flags: str) -> list[str]:
        code = "import sys; from chatmaild.backupcmd import main; sys.exit(main())"
        argv = [sys.executable, "-c", code, str(self.ini), action, "--dkim-dir", str(self.dkim)]
        if action == "restore":
            argv += ["--coturn-conf", str(self.coturn), "--no-services"]
        return argv + list(flags)

    def create(self) -> tuple[bytes, str]:
        done = subprocess.run(self.tool("create"), capture_output=True, check=True)
        return done.stdout, done.stderr.decode()

    def restore(self, archive: bytes, *flags: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(self.tool("restore", *flags), input=archive, capture_output=True)
        return subprocess.CompletedProcess(
            done.args, done.returncode, done.stdout.decode(), done.stderr.decode()
        )

    def home(self, addr: str) -> Path:
        return self.mailboxes / addr

    def snapshot(self) -> dict[str, tuple[int, int, str]]:
        """Every file and directory under the relay: mode, mtime of files, content hash."""
        found = {}
        for top, dirs, files in os.walk(self.root):
            for name in dirs + files:
                path = Path(top) / name
                st = path.lstat()
                digest = hashlib.sha256(path.read_bytes()).hexdigest() if name in files else ""
                mtime = int(st.st_mtime) if name in files else 0
                found[str(path.relative_to(self.root))] = (st.st_mode, mtime, digest)
        return found


def deliver(home: Path, folder: str, sub: str, name: str, body: bytes = b"") -> Path:
    """A message file as Dovecot leaves it in a maildir folder ("" is INBOX)."""
    directory = home / folder if folder else home
    for s in ("new", "cur", "tmp"):
        (directory / s).mkdir(parents=True, exist_ok=True)
    if folder:
        (directory / "maildirfolder").touch()
    path = directory / sub / name
    armored = b"Subject: [...]\r\n\r\n-----BEGIN PGP MESSAGE-----\r\n" + os.urandom(64)
    path.write_bytes(body or armored)
    return path


def populate(relay: Relay) -> str:
    """Accounts, mail, tokens, a push item, registration state and an invite; its token."""
    boxes = Mailboxes(relay.mailboxes)
    boxes.create(ALICE, PASSWORD)
    boxes.create(BOB, PASSWORD)
    boxes.set_last_login_day(ALICE, int(NOW - 3 * DAY))
    Admin(relay.mailboxes, DOMAIN, kick=lambda addr: True).block(BOB)
    TokenStore(relay.mailboxes).add(ALICE, TOKEN, time.time())
    PushQueue(relay.mailboxes / SPOOL_DIR).enqueue(ALICE, TOKEN)
    home = relay.home(ALICE)
    deliver(home, "", "cur", "1700000000.M1P1.relay,S=100,W=102:2,S")
    deliver(home, "", "cur", "1700000001.M2P1.relay,S=100,W=102:2,")
    deliver(home, "", "new", "1700000002.M3P1.relay,S=100,W=102")
    deliver(home, ".DeltaChat", "cur", "1700000003.M4P1.relay,S=100,W=102:2,S")
    (home / "dovecot-uidlist").write_text("3 V1700000000 N4 G0\n1 :1700000000.M1P1.relay\n")
    (home / "subscriptions").write_text("V\t2\n\nDeltaChat\n")
    (home / "dovecot.index.log").write_bytes(b"rebuilt by Dovecot")
    (home / "maildirsize").write_text("524288000S\n300 3\n")
    registration.write_state(relay.registration, "invite", True)
    registration.write_public(relay.registration, SettingsReader(relay.config).current())
    store = InviteStore(relay.registration)
    token, _ = store.create(5, 7 * DAY, NOW)
    handed = store.redeem(token, NOW, lambda: ("carol0001@example.org", PASSWORD))
    assert handed == ("carol0001@example.org", PASSWORD)
    return token


def messages(home: Path) -> set[str]:
    return {str(p.relative_to(home)) for p in home.rglob("*") if p.parent.name in ("new", "cur")}


@pytest.fixture
def source(tmp_path: Path) -> Relay:
    relay = Relay(tmp_path / "old")
    populate(relay)
    return relay


@pytest.fixture
def target(tmp_path: Path) -> Relay:
    """A freshly deployed relay: its own DKIM key and TURN secret, no accounts yet."""
    return Relay(tmp_path / "new")


def archive_of(relay: Relay) -> bytes:
    return relay.create()[0]


# --- the round trip ---------------------------------------------------------------------


def test_a_restored_relay_carries_on_where_the_old_one_stopped(
    source: Relay, target: Relay
) -> None:
    registration.write_state(target.registration, "closed", False)  # the archive's wins
    target_ini = target.ini.read_text()
    # streamed from one process into the other through a pipe, as over SSH
    with subprocess.Popen(source.tool("create"), stdout=subprocess.PIPE) as create:
        restore = subprocess.run(
            target.tool("restore"), stdin=create.stdout, capture_output=True, text=True, check=False
        )
    assert create.returncode == 0 and restore.returncode == 0, restore.stderr
    boxes = Mailboxes(target.mailboxes)
    # accounts: the same password hashes (the old password logs in), flags, last login day
    for addr in (ALICE, BOB):
        assert boxes.password_hash(addr) == Mailboxes(source.mailboxes).password_hash(addr)
    assert boxes.is_blocked(BOB) and not boxes.is_blocked(ALICE)
    assert (target.home(ALICE) / "password").stat().st_mtime == NOW - 3 * DAY - NOW % DAY
    # mail, in its folders with its flags, and what Dovecot needs to keep its UIDs
    assert messages(target.home(ALICE)) == messages(source.home(ALICE))
    assert (target.home(ALICE) / ".DeltaChat" / "maildirfolder").exists()
    assert (target.home(ALICE) / "tmp").is_dir()
    assert (target.home(ALICE) / "dovecot-uidlist").read_bytes() == (
        source.home(ALICE) / "dovecot-uidlist"
    ).read_bytes()
    # what Dovecot rebuilds is not carried over
    assert not (target.home(ALICE) / "dovecot.index.log").exists()
    assert not (target.home(ALICE) / "maildirsize").exists()
    # push: the token, and the queued notification chatmail-metadata sends at its start
    assert TokenStore(target.mailboxes).valid_tokens(ALICE, time.time()) == [TOKEN]
    assert PushQueue(target.mailboxes / SPOOL_DIR).recover() == 1
    # the relay's identity: DKIM key, TURN secret (and coturn told), registration, invites
    assert (target.dkim / "opendkim.private").read_bytes() == (
        source.dkim / "opendkim.private"
    ).read_bytes()
    assert target.turn.read_bytes() == source.turn.read_bytes()
    assert target.coturn.read_text() == source.coturn.read_text()
    settings = SettingsReader(target.config).current()
    assert (settings.mode, settings.refuse_autorelay) == ("invite", True)
    [(invite, used)] = InviteStore(target.registration).all()
    assert used == 1 and invite.uses == 5
    assert InviteStore(target.registration).handed_out("carol0001@example.org")
    assert restore.stdout.startswith("restore: ")
    assert "accounts: 2 added, 0 replaced" in restore.stdout
    # chatmail.ini stays the relay's own (cmdeploy run installs the operator's): reported
    assert target.ini.read_text() == target_ini
    assert "chatmail.ini differs from the archive's: this relay keeps its own" in restore.stdout
    # nothing staged is left behind
    assert not list(target.root.rglob(".chatmail-restore"))


def test_no_output_names_an_address_or_holds_a_secret(source: Relay, target: Relay) -> None:
    archive, create_err = source.create()
    restore = target.restore(archive)
    secrets = [
        "@",
        TOKEN,
        PASSWORD,
        source.turn.read_text().strip(),
        Mailboxes(source.mailboxes).password_hash(ALICE),
    ]
    for output in (create_err, restore.stdout, restore.stderr):
        for secret in secrets:
            assert secret not in output
    assert "backup: 2 accounts, 4 messages, " in create_err


def test_a_second_restore_changes_nothing(source: Relay, target: Relay) -> None:
    archive = archive_of(source)
    assert target.restore(archive).returncode == 0
    before = target.snapshot()
    again = target.restore(archive)
    assert again.returncode == 0
    assert again.stdout.startswith(
        "restore: nothing changed: this relay already holds what the archive has\n"
    )
    assert target.snapshot() == before


def test_a_message_whose_flags_changed_after_the_backup_is_not_restored_twice(
    source: Relay, target: Relay
) -> None:
    archive = archive_of(source)
    assert target.restore(archive).returncode == 0
    cur = target.home(ALICE) / "cur"
    old = cur / "1700000001.M2P1.relay,S=100,W=102:2,"
    old.rename(cur / "1700000001.M2P1.relay,S=100,W=102:2,S")  # seen on the new relay
    again = target.restore(archive)
    assert "nothing changed" in again.stdout
    assert len(list(cur.iterdir())) == 2


# --- consistency while the relay runs --------------------------------------------------


def test_a_maildir_rename_during_backup_loses_and_doubles_nothing(source: Relay) -> None:
    home = source.home(ALICE)
    folder = home / ".DeltaChat"
    moved = "1700000002.M3P1.relay,S=100,W=102"  # in INBOX's new/: Dovecot moves it to cur/
    flagged = "1700000003.M4P1.relay,S=100,W=102:2,S"  # in .DeltaChat's cur/: flag added
    expunged = "1700000005.M5P1.relay,S=100,W=102:2,"
    deliver(home, ".DeltaChat", "cur", expunged)
    done: set[str] = set()

    def listdir(fd: int, member: str) -> list[str]:
        names = sorted(os.listdir(fd))
        path = source.mailboxes / member.removeprefix("mailboxes/")
        if path == home / "new" and "moved" not in done:
            # after new/ was listed, before cur/: the message shows up in both listings
            done.add("moved")
            os.rename(path / moved, home / "cur" / f"{moved}:2,")
        elif path == folder / "cur" and "flagged" not in done:
            # after cur/ was listed: two names vanish before they are read
            done.add("flagged")
            os.rename(path / flagged, path / f"{flagged}T")
            os.unlink(path / expunged)
        return names

    out = io.BytesIO()
    counts = Backup(source_paths(source), DOMAIN, DOMAIN, listdir=listdir).write(out, NOW)
    assert (counts.messages, counts.expunged) == (4, 1)
    names = [m.name for m in tarfile.open(fileobj=io.BytesIO(out.getvalue())).getmembers()]
    mail = [n for n in names if fmt.is_message(n)]
    assert sorted(n.split(f"{ALICE}/")[1] for n in mail) == [
        f".DeltaChat/cur/{flagged}T",  # found again under its new name
        "cur/1700000000.M1P1.relay,S=100,W=102:2,S",
        "cur/1700000001.M2P1.relay,S=100,W=102:2,",
        f"cur/{moved}:2,",  # once, under the name it has now
    ]


def source_paths(relay: Relay) -> fmt.RelayPaths:
    return fmt.RelayPaths.from_config(relay.config, relay.ini, relay.dkim)


# --- hostile archives: one rule each --------------------------------------------------------


def crafted(*members: tuple[str, bytes], domain: str = DOMAIN) -> bytes:
    """An archive with these file members and a manifest that matches them."""
    out = io.BytesIO()
    w = ArchiveWriter(out, fmt.Header(fmt.FORMAT, domain, int(NOW)))
    for path, data in members:
        w.add_bytes(path, data)
    w.close()
    return out.getvalue()


def refused(target: Relay, archive: bytes, why: str, *flags: str) -> None:
    before = target.snapshot()
    result = target.restore(archive, *flags)
    assert result.returncode == 1, result.stdout
    assert result.stderr.startswith("chatmail-backup: ") and why in result.stderr
    assert result.stderr.count("\n") == 1 and "@" not in result.stderr
    assert target.snapshot() == before  # nothing changed, no staging left


@pytest.mark.parametrize(
    ("path", "why"),
    [
        ("mailboxes/../../escaped", "'..' component in name"),
        ("/etc/escaped", "absolute name"),
        ("mailboxes/x@example.org/./password", "'..' component in name"),
        ("etc/passwd", "outside every area"),
        ("mailboxes/x@evil.example/password", "not an account of this domain"),
        ("registration/.state.json.1.2.tmp", "a temporary file"),
        (f"mailboxes/{ALICE}", "an account or the push queue that is not a directory"),
    ],
)
def test_a_member_outside_its_place_is_refused(
    target: Relay, tmp_path: Path, path: str, why: str
) -> None:
    refused(target, crafted((path, b"x")), why)
    assert not (tmp_path / "escaped").exists()


def pax(**records: str) -> bytes:
    """The data of a pax extended header: `<length> <key>=<value>\\n` records."""
    data = b""
    for key, value in records.items():
        body = f" {key.replace('_', '.')}={value}\n".encode()
        length = len(body) + len(str(len(body)))
        length = len(body) + len(str(length))
        data += str(length).encode() + body
    return data


def raw_member(kind: bytes, name: str, data: bytes = b"") -> bytes:
    """One tar header block of any type, and its data padded to whole blocks."""
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = len(data)
    pad = -len(data) % tarfile.BLOCKSIZE
    return info.tobuf(tarfile.USTAR_FORMAT) + data + b"\0" * pad


def before_manifest(raw: bytes) -> bytes:
    """An intact archive with `raw` put in just before its manifest."""
    archive = crafted()
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        at = tar.getmember(fmt.MANIFEST).offset
    return archive[:at] + raw + archive[at:]


STATE = "registration/state.json"
HOSTILE_HEADERS = {
    "pax over the bound": (
        raw_member(tarfile.XHDTYPE, "x", pax(path=STATE, comment="x" * 1_000_000))
        + raw_member(tarfile.REGTYPE, STATE),
        "a pax header over 4096 bytes",
    ),
    "pax chain": (
        raw_member(tarfile.XHDTYPE, "x", pax(path=STATE)) * 3 + raw_member(tarfile.REGTYPE, STATE),
        "a pax header after a pax header",
    ),
    "pax sparse map": (
        raw_member(tarfile.XHDTYPE, "x", pax(GNU_sparse_major="1", GNU_sparse_minor="0"))
        + raw_member(tarfile.REGTYPE, STATE, b"9" * 2048),
        "a pax header with keys this format does not use",
    ),
    "pax size below zero": (
        raw_member(tarfile.XHDTYPE, "x", pax(size="-512")) + raw_member(tarfile.REGTYPE, STATE),
        "damaged or incomplete archive",
    ),
    "GNU long name": (
        raw_member(tarfile.GNUTYPE_LONGNAME, "././@LongLink", b"a" * 1_000_000)
        + raw_member(tarfile.REGTYPE, STATE),
        "member 2: a GNU long-name header: refused",
    ),
    "GNU sparse": (raw_member(tarfile.GNUTYPE_SPARSE, STATE), "a sparse file"),
    "global pax": (
        raw_member(tarfile.XGLTYPE, "g", pax(comment="x")) + raw_member(tarfile.REGTYPE, STATE),
        "a global pax header",
    ),
    "fifo": (raw_member(tarfile.FIFOTYPE, STATE), "a link or device"),
}


@pytest.mark.parametrize("case", HOSTILE_HEADERS)
def test_tar_headers_the_format_does_not_write_are_refused(target: Relay, case: str) -> None:
    # left to itself tarfile holds an extended header of any size, follows chains of them by
    # recursion and reads a sparse map of any length: a small archive could fill the memory
    raw, why = HOSTILE_HEADERS[case]
    refused(target, before_manifest(raw), why)


def test_a_long_name_in_a_pax_header_is_read(target: Relay) -> None:
    long = "registration/invites/" + "a" * 200
    archive = crafted((long, b"{}\n"))
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        assert tar.getmember(long).pax_headers == {"path": long}  # the writer needed one
    assert target.restore(archive).returncode == 0
    assert (target.registration / "invites" / ("a" * 200)).read_bytes() == b"{}\n"


@pytest.mark.parametrize("kind", [tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.CHRTYPE])
def test_links_and_devices_are_refused(target: Relay, kind: bytes) -> None:
    archive = crafted()
    out = io.BytesIO()
    with (
        tarfile.open(fileobj=io.BytesIO(archive)) as src,
        tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as dst,
    ):
        for member in src.getmembers():
            if member.name == fmt.MANIFEST:
                link = tarfile.TarInfo("registration/state.json")
                link.type = kind
                link.linkname = "/etc/shadow"
                dst.addfile(link)
            dst.addfile(member, src.extractfile(member) if member.isreg() else None)
    refused(target, out.getvalue(), "a link or device: refused")


def test_a_tampered_file_is_refused(source: Relay, target: Relay) -> None:
    archive = bytearray(archive_of(source))
    token_at = archive.find(TOKEN.encode())
    archive[token_at] ^= 1  # one bit of metadata.json: the manifest still has the old sum
    refused(target, bytes(archive), "does not match: refused")


def rewritten(archive: bytes, keep: Callable[[tarfile.TarInfo], bool]) -> bytes:
    out = io.BytesIO()
    with (
        tarfile.open(fileobj=io.BytesIO(archive)) as src,
        tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as dst,
    ):
        for member in src.getmembers():
            if keep(member):
                dst.addfile(member, src.extractfile(member) if member.isreg() else None)
    return out.getvalue()


def test_an_archive_without_manifest_is_refused(source: Relay, target: Relay) -> None:
    archive = rewritten(archive_of(source), lambda member: member.name != fmt.MANIFEST)
    refused(target, archive, "no MANIFEST.jsonl: the archive is incomplete")


def test_a_truncated_archive_is_refused(source: Relay, target: Relay) -> None:
    archive = archive_of(source)
    refused(target, archive[: len(archive) // 2], "incomplete")


OTHER_SECRET = b"0123456789abcdef" * 4 + b"\n"


def test_an_archive_of_another_relay_is_refused(target: Relay) -> None:
    archive = crafted(("turn-secret", OTHER_SECRET), domain="other.example")
    refused(target, archive, "the archive is of other.example, this relay is example.org")
    result = target.restore(archive, "--other-domain")
    assert result.returncode == 0 and target.turn.read_bytes() == OTHER_SECRET


def test_an_archive_of_another_domain_keeps_this_relays_dkim_key_and_certificate(
    target: Relay,
) -> None:
    # the DKIM key is the one the target's DNS publishes, the certificate names its domain
    cert, key = target.root / "cert.pem", target.root / "key.pem"
    cert.write_text("this relay's certificate\n")
    key.write_text("this relay's key\n")
    with target.ini.open("a") as f:
        f.write(f"tls_external_cert_and_key = {cert} {key}\n")
    dkim = (target.dkim / "opendkim.private").read_bytes()
    archive = crafted(
        ("dkim/opendkim.private", b"other.example's DKIM key"),
        ("tls/cert", b"other.example's certificate\n"),
        ("tls/key", b"other.example's key\n"),
        ("turn-secret", OTHER_SECRET),
        domain="other.example",
    )
    result = target.restore(archive, "--other-domain")
    assert result.returncode == 0, result.stderr
    assert (target.dkim / "opendkim.private").read_bytes() == dkim
    assert cert.read_text() == "this relay's certificate\n"
    assert key.read_text() == "this relay's key\n"
    assert target.turn.read_bytes() == OTHER_SECRET  # not the domain's: the archive's
    assert "kept this relay's DKIM key and any external certificate" in result.stdout


@pytest.mark.parametrize(
    "domain", ["example.org\x1b[2J", "other.example\nverified: an intact backup of example.org"]
)
def test_an_archive_domain_that_could_drive_the_terminal_is_refused(
    target: Relay, domain: str
) -> None:
    # the domain comes from the archive and is printed: escapes or a newline could rewrite
    # what the operator reads, so such a domain is neither echoed nor accepted
    archive = crafted(domain=domain)
    refused(target, archive, "names no valid mail domain", "--other-domain")
    done = subprocess.run(target.tool("verify"), input=archive, capture_output=True, check=False)
    assert done.returncode == 1 and done.stdout == b""
    assert b"\x1b" not in done.stderr and done.stderr.count(b"\n") == 1


@pytest.mark.parametrize("secret", [b"x\nno-auth\n", b"abc\n", OTHER_SECRET + b"no-auth\n"])
def test_a_turn_secret_that_could_add_coturn_settings_is_refused(
    target: Relay, secret: bytes
) -> None:
    # it becomes one line of coturn's config: a newline in it would add settings there
    refused(target, crafted(("turn-secret", secret)), "TURN secret is not one line of hex digits")


def test_an_oversized_single_file_is_refused(target: Relay) -> None:
    archive = crafted(("turn-secret", b"x" * (fmt.MAX_SMALL_FILE + 1)))
    refused(target, archive, "larger than 1048576 bytes")


def test_a_member_twice_is_refused(target: Relay) -> None:
    archive = crafted(("registration/state.json", b"{}\n"), ("registration/state.json", b"{}\n"))
    refused(target, archive, "appears twice")


def test_a_member_after_the_manifest_is_refused(target: Relay) -> None:
    out = io.BytesIO()
    with (
        tarfile.open(fileobj=io.BytesIO(crafted())) as src,
        tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as dst,
    ):
        for member in src.getmembers():
            dst.addfile(member, src.extractfile(member))
        extra = tarfile.TarInfo("turn-secret")
        extra.size = 4
        dst.addfile(extra, io.BytesIO(b"evil"))
    refused(target, out.getvalue(), "members after MANIFEST.jsonl")


def test_garbage_is_refused(target: Relay) -> None:
    refused(target, b"PK\x03\x04 not a tar at all" * 100, "not a tar archive")


def test_one_restore_at_a_time(source: Relay, target: Relay) -> None:
    fd = os.open(target.mailboxes, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # as a restore running now holds it
        refused(target, archive_of(source), "another restore is running on this relay")
    finally:
        os.close(fd)


# --- accounts that exist on the target -----------------------------------------------------


def test_an_account_with_another_password_is_not_overwritten(source: Relay, target: Relay) -> None:
    Mailboxes(target.mailboxes).create(ALICE, "another-password")
    archive = archive_of(source)
    refused(target, archive, "1 accounts exist on this relay with another password")
    result = target.restore(archive, "--replace-accounts")
    assert result.returncode == 0 and "accounts: 1 added, 1 replaced" in result.stdout
    assert Mailboxes(target.mailboxes).password_hash(ALICE) == Mailboxes(
        source.mailboxes
    ).password_hash(ALICE)


def test_files_of_an_account_that_changed_here_stay(source: Relay, target: Relay) -> None:
    archive = archive_of(source)
    assert target.restore(archive).returncode == 0
    TokenStore(target.mailboxes).add(ALICE, "newer-token", time.time())
    result = target.restore(archive)
    assert "kept 1 account files that differ here" in result.stdout
    assert "newer-token" in TokenStore(target.mailboxes).valid_tokens(ALICE, time.time())


def test_an_archive_account_without_a_password_is_left_out(target: Relay) -> None:
    # without its hash an account has no known owner: merged into Alice's here, its mail
    # would be hers; created, it would be whoever's claims the address first
    Mailboxes(target.mailboxes).create(ALICE, "another-password")
    alice_hash = Mailboxes(target.mailboxes).password_hash(ALICE)
    message = "cur/1700000000.M1P1.relay,S=1,W=1:2,"
    archive = crafted(
        (f"mailboxes/{ALICE}/{message}", b"not Alice's"),
        (f"mailboxes/{BOB}/password", b"\n"),  # an empty hash is none either
        (f"mailboxes/{BOB}/{message}", b"nobody's"),
        ("turn-secret", OTHER_SECRET),
    )
    result = target.restore(archive)
    assert result.returncode == 0, result.stderr
    assert "left out 2 archive accounts without a password hash" in result.stdout
    assert "@" not in result.stdout
    assert messages(target.home(ALICE)) == set()
    assert Mailboxes(target.mailboxes).password_hash(ALICE) == alice_hash
    assert not target.home(BOB).exists()
    assert target.turn.read_bytes() == OTHER_SECRET  # the rest of the archive is restored


# --- symlinks another user put into the trees (vmail, www-data) ----------------------------

SHADOW = b"root:$y$secret-hash:20000:0:99999:7:::\n"


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A directory outside every tree, with a file only root may read."""
    directory = tmp_path / "outside"
    directory.mkdir()
    (directory / "shadow").write_bytes(SHADOW)
    (directory / "shadow").chmod(0o600)
    return directory


def tree_state(root: Path) -> dict[str, tuple[int, int, int, bytes]]:
    found = {}
    for path in [root, *root.rglob("*")]:
        st = path.lstat()
        data = path.read_bytes() if path.is_file() else b""
        found[str(path.relative_to(root))] = (st.st_mode, st.st_uid, st.st_gid, data)
    return found


def test_a_backup_follows_no_symlink_in_the_trees(source: Relay, outside: Path) -> None:
    home = source.home(ALICE)
    shutil.rmtree(home / ".DeltaChat" / "cur")
    (home / ".DeltaChat" / "cur").symlink_to(outside)  # a directory on the way to messages
    (home / "cur" / "1700000009.M9P1.relay,S=1,W=1:2,").symlink_to(outside / "shadow")
    (home / "metadata.json").unlink()
    (home / "metadata.json").symlink_to(outside / "shadow")  # a home file
    (home / ".Evil").symlink_to(outside)  # a folder
    (source.registration / "uses" / "planted").symlink_to(outside / "shadow")  # www-data's
    archive, err = source.create()
    assert SHADOW not in archive
    assert "5 symlinks skipped, never followed" in err and "@" not in err
    names = tarfile.open(fileobj=io.BytesIO(archive)).getnames()
    assert f"mailboxes/{ALICE}/cur/1700000000.M1P1.relay,S=100,W=102:2,S" in names


@pytest.mark.parametrize(
    "planted",
    [
        f"mailboxes/{ALICE}/cur",  # messages would be renamed into the link's target
        f"mailboxes/{ALICE}/.DeltaChat",  # a folder: made, chowned and filled through it
        f"mailboxes/{ALICE}/dovecot-uidlist",  # a file: read and compared through it
        f"mailboxes/{ALICE}/password",  # checked for a conflict before anything
        "registration/uses",  # www-data's: the archive's files replace what is there
    ],
)
def test_a_restore_goes_through_no_symlink_in_the_trees(
    source: Relay, target: Relay, outside: Path, planted: str
) -> None:
    archive = archive_of(source)
    home = target.home(ALICE)
    home.mkdir()
    if not planted.endswith("password"):  # the same account here: its files merge
        shutil.copy(source.home(ALICE) / "password", home / "password")
    link = target.root / planted
    if link.is_dir():
        shutil.rmtree(link)
    link.symlink_to(outside if link.name in ("cur", ".DeltaChat", "uses") else outside / "shadow")
    before = tree_state(outside)
    result = target.restore(archive)
    shown = planted.replace(ALICE, "<account>")
    assert result.returncode == 1, result.stdout
    assert result.stderr.startswith(f"chatmail-backup: {shown} is a symlink on this relay: ")
    assert result.stderr.count("\n") == 1 and "@" not in result.stderr
    assert tree_state(outside) == before
    assert link.is_symlink()


# --- owners, modes, services -------------------------------------------------------------


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give files to other owners")
def test_restored_files_get_the_owner_of_their_place(source: Relay, target: Relay) -> None:
    vmail, www = 4321, 4322
    os.chown(target.mailboxes, vmail, vmail)
    for sub in ("uses", "handed"):
        os.chown(target.registration / sub, www, www)
    os.chown(target.turn, 0, vmail)
    os.chmod(target.turn, 0o640)
    assert target.restore(archive_of(source)).returncode == 0
    password = target.home(ALICE) / "password"
    assert (password.stat().st_uid, password.stat().st_gid) == (vmail, vmail)
    assert password.stat().st_mode & 0o777 == 0o600
    assert target.home(ALICE).stat().st_uid == vmail
    assert (target.home(ALICE) / "cur").stat().st_uid == vmail
    [handed] = (target.registration / "handed").iterdir()
    assert handed.stat().st_uid == www and handed.stat().st_mode & 0o777 == 0o644
    # a replaced file keeps its owner and mode: coturn's and chatmail-metadata's group reads it
    st = target.turn.stat()
    assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (0, vmail, 0o640)


class Units:
    def __init__(self) -> None:
        self.calls: list[tuple[str, list[str]]] = []

    def run(self, action: str, units: list[str]) -> None:
        self.calls.append((action, units))


def test_restore_stops_mail_while_it_puts_mail_in_place_and_restarts_what_changed(
    source: Relay, target: Relay
) -> None:
    archive = archive_of(source)
    units = Units()
    restore = Restore(source_paths(target), DOMAIN, units, coturn_conf=target.coturn)
    report = restore.run(io.BytesIO(archive))
    assert units.calls == [
        ("stop", ["postfix", "dovecot", "chatmail-metadata"]),
        ("start", ["postfix", "dovecot", "chatmail-metadata"]),
        ("restart", ["coturn", "opendkim"]),
    ]
    assert report.changed
    units.calls.clear()
    assert not restore.run(io.BytesIO(archive)).changed
    assert units.calls == []


def test_an_external_certificate_is_restored_and_its_readers_restarted(
    tmp_path: Path,
) -> None:
    relays = []
    for name in ("old", "new"):
        relay = Relay(tmp_path / name)
        cert, key = relay.root / "cert.pem", relay.root / "key.pem"
        cert.write_text(f"{name} certificate\n")
        key.write_text(f"{name} key\n")
        with relay.ini.open("a") as f:
            f.write(f"tls_external_cert_and_key = {cert} {key}\n")
        relay.config = read_config(relay.ini)
        relays.append(relay)
    old, new = relays
    units = Units()
    Restore(source_paths(new), DOMAIN, units).run(io.BytesIO(archive_of(old)))
    assert (new.root / "cert.pem").read_text() == "old certificate\n"
    assert (new.root / "key.pem").read_text() == "old key\n"
    assert ("restart", ["coturn", "dovecot", "nginx", "opendkim", "postfix"]) in units.calls


def test_an_external_certificate_behind_symlinks_is_backed_up(tmp_path: Path) -> None:
    # certbot's layout: live/<name>/*.pem are symlinks into archive/<name>/
    relay = Relay(tmp_path / "old")
    archive_dir, live = relay.root / "archive", relay.root / "live"
    archive_dir.mkdir()
    live.mkdir()
    for name in ("cert", "key"):
        (archive_dir / f"{name}1.pem").write_text(f"the {name}\n")
        (live / f"{name}.pem").symlink_to(archive_dir / f"{name}1.pem")
    with relay.ini.open("a") as f:
        f.write(f"tls_external_cert_and_key = {live / 'cert.pem'} {live / 'key.pem'}\n")
    relay.config = read_config(relay.ini)
    with tarfile.open(fileobj=io.BytesIO(archive_of(relay))) as tar:
        members = {m.name: m for m in tar.getmembers()}
        for area, text in ((fmt.TLS_CERT, "the cert\n"), (fmt.TLS_KEY, "the key\n")):
            assert members[area].isfile()
            extracted = tar.extractfile(members[area])
            assert extracted is not None and extracted.read().decode() == text


def test_a_failed_restore_starts_the_mail_services_again(
    source: Relay, target: Relay, monkeypatch: pytest.MonkeyPatch
) -> None:
    units = Units()
    restore = Restore(source_paths(target), DOMAIN, units)

    real_install = restore_module._install

    def install(staged: int, live: int, name: str) -> None:
        if name == "password":  # an account's first file: the mail services are stopped
            raise OSError(28, "No space left on device")
        real_install(staged, live, name)

    monkeypatch.setattr(restore_module, "_install", install)
    with pytest.raises(OSError):
        restore.run(io.BytesIO(archive_of(source)))
    assert [action for action, _ in units.calls] == ["stop", "start", "restart"]


# --- small parts ---------------------------------------------------------------------------


def test_the_coturn_secret_line_is_replaced_and_nothing_else() -> None:
    conf = "realm=x\nstatic-auth-secret=old\nno-tls\n"
    assert with_turn_secret(conf, "new") == "realm=x\nstatic-auth-secret=new\nno-tls\n"


def test_progress_is_counts_only_and_not_every_file() -> None:
    out = io.StringIO()
    clock: list[float] = [0.0]
    line = ProgressLine("backup", out, clock=lambda: clock[0])
    line(1, 10)
    clock[0] = 2.5
    line(2, 2_500_000)
    line(3, 2_600_000)
    assert out.getvalue() == "backup: 2 files, 2.5 MB so far\n"


@pytest.mark.parametrize("text", [f"/m/{ALICE}/cur/x: Permission denied", f"'{ALICE}'"])
def test_an_error_line_names_no_account(text: str) -> None:
    assert ALICE not in redact(text) and "<account>" in redact(text)


def test_verify_checks_without_writing(source: Relay, tmp_path: Path) -> None:
    archive = archive_of(source)
    done = subprocess.run(source.tool("verify"), input=archive, capture_output=True, check=False)
    assert done.returncode == 0
    assert done.stdout.decode().startswith("verified: an intact backup of example.org, made ")
