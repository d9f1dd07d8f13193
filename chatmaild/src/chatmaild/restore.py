"""Putting a backup archive in place on a relay (doc/backup.md).

Nothing becomes live before the whole stream was read and checked:

1. `backupread.read_archive` checks every member and the manifest while `Staging` puts the
   files aside: in a staging directory inside each target tree (same filesystem: a rename
   puts them in place), created exclusively, never through a symlink; the single-file areas
   (at most 1 MiB each) in memory.
2. `Restore.apply` then merges the staged trees into the live ones:
   - accounts are never silently overwritten: an account that exists here with another
     password refuses the whole restore, before any change, unless `replace_accounts`
     (then that account's home is replaced by the archive's). Within an account that exists
     here with the same password, a file that differs stays as it is here (the relay's own
     is the newer one: a uidlist or token file rewritten since), and a message counts as
     present when a file with its unique part is in the folder, whatever its flags;
   - the relay-wide secrets and state (DKIM key, TURN secret, external certificate,
     registration state and invites) are the archive's: that is what makes the target the
     same relay as the source;
   - `chatmail.ini` is not written: `cmdeploy run` installs the operator's own at every
     deploy, so a restored one would not last; a difference is reported.
   A second restore of the same archive thus finds every file in place and changes nothing.
3. Services: Postfix, Dovecot and chatmail-metadata are stopped while mail is put in place
   (no delivery or client sees half an account; chatmail-metadata queues restored push
   items only at its start) and started again afterwards, even after a failure. OpenDKIM
   restarts after a new key, coturn after a new TURN secret (its config is edited first),
   nginx, Postfix and Dovecot after a new external certificate.

New files and directories get the owner of the directory they go into, and the archive's
mode without set-id bits or group/other write; a replaced file keeps its owner and mode.
No output names an address or holds a secret: counts and areas only.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, BinaryIO, Protocol

from . import backupformat as fmt
from .backupformat import ArchiveError
from .backupread import CHUNK, Progress, read_archive
from .fsutil import write_atomic

STAGING = ".chatmail-restore"

MAIL_UNITS = ["postfix", "dovecot", "chatmail-metadata"]
AREA_UNITS = {
    fmt.DKIM: ["opendkim"],
    fmt.TURN_SECRET: ["coturn"],
    fmt.TLS_CERT: ["nginx", "postfix", "dovecot"],
    fmt.TLS_KEY: ["nginx", "postfix", "dovecot"],
}


# --- staging --------------------------------------------------------------------------------


class Staging:
    """Members put aside: trees in `<root>/.chatmail-restore/`, single files in memory."""

    def __init__(self, paths: fmt.RelayPaths) -> None:
        self.roots = paths.trees()
        self.small: dict[str, bytes] = {}
        self.modes: dict[str, int] = {}
        for area, root in self.roots.items():
            if not root.is_dir():
                raise ArchiveError(f"{area}: {root} is missing: deploy this relay first")
        for area in self.roots:
            self.remove(area)  # what an interrupted restore left
            self.dir(area).mkdir(mode=0o700)

    def dir(self, area: str) -> Path:
        return self.roots[area] / STAGING

    def _path(self, path: str) -> Path:
        area, _, rest = path.partition("/")
        if area not in self.roots:
            raise ArchiveError(f"the archive has {area} data, this relay has no place for it")
        return self.dir(area) / rest if rest else self.dir(area)

    def directory(self, path: str, mode: int) -> None:
        target = self._path(path)
        if target in [self.dir(area) for area in self.roots]:
            return  # an area's own directory: the staging directory stays 0700, root's
        target.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(target, mode | 0o700, follow_symlinks=False)

    def open_file(self, path: str) -> IO[bytes]:
        if path in fmt.FILES:
            if path in self.small:
                raise FileExistsError(path)
            return _Memory()
        target = self._path(path)
        target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
        return os.fdopen(os.open(target, flags, 0o600), "wb")

    def close_file(self, path: str, f: IO[bytes], mode: int, mtime: int) -> None:
        if isinstance(f, _Memory):
            self.small[path] = f.getvalue()
            self.modes[path] = mode
            f.close()
            return
        f.flush()  # before the mtime is set: a later write would move it
        os.fchmod(f.fileno(), mode)
        os.utime(f.fileno(), (mtime, mtime))
        f.close()

    def remove(self, area: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(self.dir(area))

    def cleanup(self) -> None:
        for area in self.roots:
            self.remove(area)


class _Memory(tempfile.SpooledTemporaryFile[bytes]):
    def __init__(self) -> None:
        super().__init__(max_size=fmt.MAX_SMALL_FILE + 1)

    def getvalue(self) -> bytes:
        self.seek(0)
        return self.read()


# --- services -----------------------------------------------------------------------------


class Units(Protocol):
    def run(self, action: str, units: list[str]) -> None: ...


class Systemd:
    def __init__(self) -> None:
        self.failed: list[str] = []

    def run(self, action: str, units: list[str]) -> None:
        for unit in units:
            result = subprocess.run(
                ["systemctl", action, unit], capture_output=True, timeout=300, check=False
            )
            if result.returncode != 0:
                self.failed.append(f"{action} {unit}")


class NoUnits:
    """Leaves services alone (`--no-services`: tests, or a relay stopped by hand)."""

    def run(self, action: str, units: list[str]) -> None:
        pass


# hex digits on one line, as the deploy generates it (`secrets.token_hex(32)`) and writes it
TURN_SECRET_FORM = re.compile(rb"[0-9a-f]{32,128}\n?")


def with_turn_secret(conf: str, secret: str) -> str:
    """coturn's config with `static-auth-secret` set to `secret` (the deploy's template has
    exactly one such line; the next `cmdeploy run` renders the same)."""
    lines = conf.splitlines(keepends=True)
    for i, line in enumerate(lines):
        if line.startswith("static-auth-secret="):
            lines[i] = f"static-auth-secret={secret}\n"
    return "".join(lines)


# --- applying -------------------------------------------------------------------------------


@dataclass
class Report:
    installed: int = 0  # files that were not here
    replaced: int = 0  # relay-wide files that differed: now the archive's
    unchanged: int = 0
    kept: int = 0  # account files that differ here: the relay's own stay
    accounts_new: int = 0
    accounts_replaced: int = 0
    areas: set[str] = field(default_factory=set)  # areas where something changed
    ini_differs: bool = False
    services: list[str] = field(default_factory=list)  # "restart opendkim", ...
    failed: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.installed or self.replaced or self.accounts_replaced)

    def render(self) -> str:
        if not self.changed:
            lines = ["restore: nothing changed: this relay already holds what the archive has"]
        else:
            lines = [
                f"restore: {self.installed} files added, {self.replaced} replaced, "
                f"{self.unchanged} already here",
                f"accounts: {self.accounts_new} added, {self.accounts_replaced} replaced",
            ]
        if self.kept:
            lines.append(
                f"kept {self.kept} account files that differ here (this relay's are newer)"
            )
        if self.ini_differs:
            lines.append(
                "chatmail.ini differs from the archive's: this relay keeps its own "
                "(cmdeploy run installs the operator's)"
            )
        if self.services:
            lines.append("services: " + ", ".join(self.services))
        for failure in self.failed:
            lines.append(f"failed: systemctl {failure}")
        return "".join(line + "\n" for line in lines)


def _owner_of(path: Path) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_uid, st.st_gid


def _same(a: Path, b: Path) -> bool:
    """Whether two files hold the same bytes (filecmp would cache every pair it saw)."""
    if os.stat(a).st_size != os.stat(b).st_size:
        return False
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            chunk = fa.read(CHUNK)
            if chunk != fb.read(CHUNK):
                return False
            if not chunk:
                return True


def _install(staged: Path, target: Path) -> None:
    os.chown(staged, *_owner_of(target.parent))
    os.rename(staged, target)


def _make_dir(staged: Path, target: Path) -> None:
    mode = os.stat(staged).st_mode & fmt.MODE_MASK
    target.mkdir(mode=mode)
    os.chmod(target, mode)  # mkdir's mode passes through the umask
    os.chown(target, *_owner_of(target.parent))


def _replace(staged: Path, target: Path) -> None:
    st = os.stat(target)
    os.chown(staged, st.st_uid, st.st_gid)
    os.chmod(staged, st.st_mode & 0o7777)
    os.replace(staged, target)


def _replace_data(target: Path, data: bytes, mode: int) -> None:
    try:
        st = os.stat(target)
    except FileNotFoundError:
        write_atomic(target, data, mode=mode)
        os.chown(target, *_owner_of(target.parent))
        return
    write_atomic(target, data, mode=st.st_mode & 0o7777)
    os.chown(target, st.st_uid, st.st_gid)


@contextlib.contextmanager
def _only_restore(mailboxes: Path) -> Iterator[None]:
    """One restore at a time (a second would remove the first one's staging directories):
    an flock on the mailboxes directory itself, which leaves no file behind."""
    try:
        fd = os.open(mailboxes, os.O_RDONLY | os.O_DIRECTORY)
    except FileNotFoundError:
        raise ArchiveError(f"{mailboxes} is missing: deploy this relay first") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ArchiveError("another restore is running on this relay") from None
        yield
    finally:
        os.close(fd)


def _walk(root: Path) -> Iterator[tuple[Path, list[str], list[str]]]:
    for top, dirs, files in os.walk(root):
        dirs.sort()
        yield Path(top), dirs, sorted(files)


@dataclass
class Restore:
    paths: fmt.RelayPaths
    mail_domain: str
    units: Units
    coturn_conf: Path | None = None
    other_domain: bool = False  # restore an archive of another domain
    replace_accounts: bool = False  # replace accounts that exist here with another password

    def run(self, stream: BinaryIO, progress: Progress | None = None) -> Report:
        with _only_restore(self.paths.mailboxes):
            staging = Staging(self.paths)
            try:
                expect = None if self.other_domain else self.mail_domain
                read_archive(stream, staging, expect, progress)
                return self.apply(staging)
            finally:
                staging.cleanup()

    def apply(self, staging: Staging) -> Report:
        report = Report()
        secret = staging.small.get(fmt.TURN_SECRET)
        if secret is not None and not TURN_SECRET_FORM.fullmatch(secret):
            # it goes into coturn's config as one line: anything else could add settings
            raise ArchiveError(
                "the archive's TURN secret is not one line of hex digits: nothing restored"
            )
        staged_accounts = [n for n in os.listdir(staging.dir(fmt.MAILBOXES)) if "@" in n]
        conflicts = self._conflicts(staging, staged_accounts)
        if conflicts and not self.replace_accounts:
            raise ArchiveError(
                f"{len(conflicts)} accounts exist on this relay with another password: "
                "nothing restored (--replace-accounts replaces them with the archive's)"
            )
        report.accounts_new = sum(
            not (self.paths.mailboxes / name).exists() for name in staged_accounts
        )
        self._small_files(staging, report)
        for area in (fmt.DKIM, fmt.REGISTRATION):
            if area in staging.roots:
                self._tree(staging, area, report, archive_wins=True)
        stopped: list[str] = []

        def stop_mail() -> None:
            if not stopped:
                stopped.extend(MAIL_UNITS)
                self.units.run("stop", MAIL_UNITS)
                report.services.append("stopped " + " ".join(MAIL_UNITS))

        try:
            if conflicts:
                stop_mail()
                for account in conflicts:
                    shutil.rmtree(self.paths.mailboxes / account)
                report.accounts_replaced = len(conflicts)
            self._tree(staging, fmt.MAILBOXES, report, archive_wins=False, first_change=stop_mail)
        finally:
            if stopped:
                self.units.run("start", stopped)
                report.services.append("started " + " ".join(stopped))
            restart = sorted(
                {u for area in report.areas for u in AREA_UNITS.get(area, [])} - set(stopped)
            )
            if restart:
                self.units.run("restart", restart)
                report.services.append("restarted " + " ".join(restart))
            report.failed = list(getattr(self.units, "failed", []))
        return report

    def _conflicts(self, staging: Staging, staged_accounts: list[str]) -> list[str]:
        """Accounts here whose password differs from the archive's."""
        found = []
        for name in sorted(staged_accounts):
            password = staging.dir(fmt.MAILBOXES) / name / "password"
            here = self.paths.mailboxes / name / "password"
            if password.is_file() and here.is_file() and not _same(password, here):
                found.append(name)
        return found

    def _small_files(self, staging: Staging, report: Report) -> None:
        targets = self.paths.files()
        for area, data in staging.small.items():
            target = targets.get(area)
            if target is None:
                continue  # an external certificate for a relay that has none configured
            try:
                here = target.read_bytes()
            except FileNotFoundError:
                here = None
            if here == data:
                report.unchanged += 1
                continue
            if area == fmt.INI:
                report.ini_differs = True
                continue
            _replace_data(target, data, staging.modes[area])
            report.areas.add(area)
            if here is None:
                report.installed += 1
            else:
                report.replaced += 1
            if area == fmt.TURN_SECRET:
                self._coturn(data)

    def _coturn(self, secret: bytes) -> None:
        if self.coturn_conf is None or not self.coturn_conf.is_file():
            return
        conf = with_turn_secret(self.coturn_conf.read_text(), secret.decode().strip())
        _replace_data(self.coturn_conf, conf.encode(), 0o640)

    def _tree(
        self,
        staging: Staging,
        area: str,
        report: Report,
        archive_wins: bool,
        first_change: Callable[[], None] = lambda: None,
    ) -> None:
        staged_root = staging.dir(area)
        root = staging.roots[area]
        folders: dict[Path, set[str]] = {}  # unique parts of the messages in a live folder
        account: tuple[str, ...] = ()
        # top-down: a directory is made before anything goes into it
        for top, dirs, files in _walk(staged_root):
            rel = top.relative_to(staged_root)
            if rel.parts[:1] != account:
                account = rel.parts[:1]
                folders.clear()  # one account's folders at a time: bounded memory
            for name in dirs:
                if not (root / rel / name).exists():
                    first_change()
                    _make_dir(top / name, root / rel / name)
            for name in files:
                staged, target = top / name, root / rel / name
                if area == fmt.MAILBOXES and fmt.is_message(f"{area}/{rel / name}"):
                    folder = target.parent.parent
                    if folder not in folders:
                        folders[folder] = {
                            fmt.unique_part(n)
                            for sub in ("new", "cur")
                            for n in _listdir(folder / sub)
                        }
                    if fmt.unique_part(name) in folders[folder]:
                        report.unchanged += 1  # here already, perhaps with other flags
                        continue
                    folders[folder].add(fmt.unique_part(name))
                if not target.exists():
                    first_change()
                    _install(staged, target)
                    report.installed += 1
                    report.areas.add(area)
                elif _same(staged, target):
                    report.unchanged += 1
                elif archive_wins:
                    first_change()
                    _replace(staged, target)
                    report.replaced += 1
                    report.areas.add(area)
                else:
                    report.kept += 1


def _listdir(path: Path) -> list[str]:
    try:
        return os.listdir(path)
    except (FileNotFoundError, NotADirectoryError):
        return []
