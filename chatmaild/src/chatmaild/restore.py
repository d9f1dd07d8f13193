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
     present when a file with its unique part is in the folder, whatever its flags. An
     archive account without a password hash has no known owner: it is left out, counted;
   - the relay-wide secrets and state (DKIM key, TURN secret, external certificate,
     registration state and invites) are the archive's: that is what makes the target the
     same relay as the source. Of an archive of another domain, the DKIM key and the
     external certificate are not: they belong to the domain, and the target keeps its own;
   - the live trees belong to other users (vmail, www-data): they are walked by directory
     fds (`nofollow`), and a symlink met there stops the restore with one line saying
     where, rather than be followed;
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
import errno
import fcntl
import os
import re
import stat
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, BinaryIO, Protocol

from . import backupformat as fmt
from . import nofollow
from .accounts import PASSWORD_FILE
from .backupformat import ArchiveError
from .backupread import CHUNK, Progress, read_archive
from .fsutil import write_atomic

STAGING = ".chatmail-restore"

MAIL_UNITS = ["postfix", "dovecot", "chatmail-metadata"]
# A DKIM key is the one its domain's DNS record publishes, a certificate names its domain:
# restoring another domain's archive, the relay keeps its own.
DOMAIN_AREAS = (fmt.DKIM, fmt.TLS_CERT, fmt.TLS_KEY)
AREA_UNITS = {
    fmt.DKIM: ["opendkim"],
    fmt.TURN_SECRET: ["coturn"],
    fmt.TLS_CERT: ["nginx", "postfix", "dovecot"],
    fmt.TLS_KEY: ["nginx", "postfix", "dovecot"],
}


# --- staging --------------------------------------------------------------------------------


class Staging:
    """Members put aside: trees in `<root>/.chatmail-restore/`, single files in memory.

    The staging directories lie inside trees that other users own (vmail, www-data). Each is
    made here with mode 0700, opened once without following a symlink and checked to be this
    process's own; everything in it is reached relative to that fd, so its owner alone can
    change what is inside, and the name being swapped afterwards changes nothing."""

    def __init__(self, paths: fmt.RelayPaths) -> None:
        self.roots = paths.trees()
        self.small: dict[str, bytes] = {}
        self.modes: dict[str, int] = {}
        self.root_fds: dict[str, int] = {}  # each area's live directory
        self.fds: dict[str, int] = {}  # each area's staging directory
        try:
            for area, root in self.roots.items():
                try:
                    fd = nofollow.open_dir(None, root)
                except nofollow.SymlinkMet:
                    raise ArchiveError(f"{area}: {root} is a symlink: name the directory") from None
                if fd is None:
                    raise ArchiveError(f"{area}: {root} is missing: deploy this relay first")
                self.root_fds[area] = fd
                with _stop_at_symlink(area):
                    nofollow.remove_tree(fd, STAGING)  # what an interrupted restore left
                os.mkdir(STAGING, mode=0o700, dir_fd=fd)
                self.fds[area] = _own_dir(fd, STAGING)
        except BaseException:
            self.cleanup()
            raise

    def _place(self, path: str) -> tuple[int, str]:
        """The staging directory's fd for `path`, and the name below it ("": the area)."""
        area, _, rest = path.partition("/")
        if area not in self.fds:
            raise ArchiveError(f"the archive has {area} data, this relay has no place for it")
        return self.fds[area], rest

    def directory(self, path: str, mode: int) -> None:
        fd, rest = self._place(path)
        if not rest:
            return  # an area's own directory: the staging directory stays 0700, root's
        _make_dirs(fd, rest)
        os.chmod(rest, mode | 0o700, dir_fd=fd)

    def open_file(self, path: str) -> IO[bytes]:
        if path in fmt.FILES:
            if path in self.small:
                raise FileExistsError(path)
            return _Memory()
        fd, rest = self._place(path)
        parent = rest.rpartition("/")[0]
        if parent:
            _make_dirs(fd, parent)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        return os.fdopen(os.open(rest, flags, 0o600, dir_fd=fd), "wb")

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

    def cleanup(self) -> None:
        for fd in self.fds.values():
            os.close(fd)
        self.fds.clear()
        try:
            for fd in self.root_fds.values():
                # swapped for a symlink meanwhile: that is left alone, not followed
                with contextlib.suppress(nofollow.SymlinkMet):
                    nofollow.remove_tree(fd, STAGING)
        finally:
            for fd in self.root_fds.values():
                os.close(fd)
            self.root_fds.clear()


def _own_dir(parent: int, name: str) -> int:
    """The directory this process just made as `name` in `parent`, opened: refused if another
    user swapped in a directory of their own meanwhile (they could put symlinks in it)."""
    fd = nofollow.open_dir(parent, name)
    if fd is None:
        raise ArchiveError(f"{name} vanished while this restore made it")
    st = os.fstat(fd)
    if st.st_uid != os.geteuid() or st.st_mode & 0o077:
        os.close(fd)
        raise ArchiveError(f"{name} was swapped while this restore made it: refused")
    return fd


def _make_dirs(fd: int, rel: str) -> None:
    """`rel` and its parents below the directory `fd`, as `mkdir -p` (in a staging directory:
    it holds no symlink)."""
    parts = rel.split("/")
    for depth in range(1, len(parts) + 1):
        name = "/".join(parts[:depth])
        try:
            os.mkdir(name, mode=0o700, dir_fd=fd)
        except FileExistsError:
            if not stat.S_ISDIR(os.stat(name, dir_fd=fd, follow_symlinks=False).st_mode):
                raise NotADirectoryError(errno.ENOTDIR, "a file and a directory", rel) from None


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
    accounts_unowned: int = 0  # in the archive without a password hash: left out
    other_domain: bool = False  # the archive's: DOMAIN_AREAS stay this relay's
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
        if self.accounts_unowned:
            lines.append(
                f"left out {self.accounts_unowned} archive accounts without a password hash "
                "(no known owner: neither merged into an account here nor created)"
            )
        if self.other_domain:
            lines.append(
                "kept this relay's DKIM key and any external certificate: the archive is of "
                "another mail domain, and they belong to this one"
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


def _same(staged: int, staged_name: str, live: int, name: str) -> bool:
    """Whether two files hold the same bytes (filecmp would cache every pair it saw); a live
    one that is no regular file is not the same."""
    a = nofollow.open_file(staged, staged_name)
    if a is None:
        return False
    with open(a, "rb") as fa:
        b = nofollow.open_file(live, name)
        if b is None:
            return False
        with open(b, "rb") as fb:
            if os.fstat(a).st_size != os.fstat(b).st_size:
                return False
            while True:
                chunk = fa.read(CHUNK)
                if chunk != fb.read(CHUNK):
                    return False
                if not chunk:
                    return True


def _install(staged: int, live: int, name: str) -> None:
    st = os.fstat(live)  # the owner of the directory it goes into
    os.chown(name, st.st_uid, st.st_gid, dir_fd=staged)
    os.rename(name, name, src_dir_fd=staged, dst_dir_fd=live)


def _make_dir(staged: int, live: int, name: str) -> None:
    mode = os.stat(name, dir_fd=staged).st_mode & fmt.MODE_MASK
    owner = os.fstat(live)
    os.mkdir(name, mode=mode, dir_fd=live)
    fd = nofollow.open_dir(live, name)
    if fd is None:
        raise FileNotFoundError(errno.ENOENT, "removed while restored", name)
    with nofollow.closing(fd):
        os.fchmod(fd, mode)  # mkdir's mode passes through the umask
        os.fchown(fd, owner.st_uid, owner.st_gid)


def _replace(staged: int, live: int, name: str, here: os.stat_result) -> None:
    os.chown(name, here.st_uid, here.st_gid, dir_fd=staged)
    os.chmod(name, here.st_mode & 0o7777, dir_fd=staged)
    os.replace(name, name, src_dir_fd=staged, dst_dir_fd=live)


def _replace_data(target: Path, data: bytes, mode: int) -> None:
    try:
        st = os.stat(target)
    except FileNotFoundError:
        write_atomic(target, data, mode=mode)
        parent = os.stat(target.parent)  # a root-owned place the config names
        os.chown(target, parent.st_uid, parent.st_gid)
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


def _has_password(staged: int, account: str) -> bool:
    """Whether a staged account holds a password hash (Mailboxes.password_hash's rule)."""
    fd = nofollow.open_file(staged, f"{account}/{PASSWORD_FILE}")
    if fd is None:
        return False
    with open(fd, "rb") as f:
        return bool(f.read().strip())


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
                header = read_archive(stream, staging, expect, progress)
                return self.apply(staging, header.domain)
            finally:
                staging.cleanup()

    def apply(self, staging: Staging, domain: str) -> Report:
        report = Report()
        secret = staging.small.get(fmt.TURN_SECRET)
        if secret is not None and not TURN_SECRET_FORM.fullmatch(secret):
            # it goes into coturn's config as one line: anything else could add settings
            raise ArchiveError(
                "the archive's TURN secret is not one line of hex digits: nothing restored"
            )
        report.other_domain = domain != self.mail_domain
        mail, live = staging.fds[fmt.MAILBOXES], staging.root_fds[fmt.MAILBOXES]
        accounts = []
        for name in sorted(name for name in os.listdir(mail) if "@" in name):
            if _has_password(mail, name):
                accounts.append(name)
            else:
                # an account without its hash has no known owner: merged into one here, or
                # created, its mail would go to whoever holds or next claims the address
                nofollow.remove_tree(mail, name)
                report.accounts_unowned += 1
        conflicts = self._conflicts(mail, live, accounts)
        if conflicts and not self.replace_accounts:
            raise ArchiveError(
                f"{len(conflicts)} accounts exist on this relay with another password: "
                "nothing restored (--replace-accounts replaces them with the archive's)"
            )
        report.accounts_new = sum(nofollow.lstat(live, name) is None for name in accounts)
        self._small_files(staging, report)
        for area in (fmt.DKIM, fmt.REGISTRATION):
            if area in staging.roots and not (report.other_domain and area in DOMAIN_AREAS):
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
                    with _stop_at_symlink(fmt.MAILBOXES):
                        nofollow.remove_tree(live, account)
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

    def _conflicts(self, mail: int, live: int, accounts: list[str]) -> list[str]:
        """Accounts here whose password differs from the archive's."""
        found = []
        for name in accounts:
            with _stop_at_symlink(fmt.MAILBOXES):
                home = nofollow.open_path(live, [name])
            if home is None:
                continue
            with nofollow.closing(home), _stop_at_symlink(fmt.MAILBOXES, name):
                staged = f"{name}/{PASSWORD_FILE}"
                if nofollow.lstat(home, PASSWORD_FILE) is not None and not _same(
                    mail, staged, home, PASSWORD_FILE
                ):
                    found.append(name)
        return found

    def _small_files(self, staging: Staging, report: Report) -> None:
        targets = self.paths.files()
        for area, data in staging.small.items():
            target = targets.get(area)
            if target is None:
                continue  # an external certificate for a relay that has none configured
            if report.other_domain and area in DOMAIN_AREAS:
                continue
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
        """Merge the staged tree into the live one, each live directory opened without
        following a symlink (`nofollow`): a symlink met stops the restore."""
        root = staging.root_fds[area]
        folders: dict[tuple[str, ...], set[str]] = {}  # unique parts of a live folder's messages
        account: tuple[str, ...] = ()
        # top-down: a directory is made before anything goes into it
        for top, dirs, files, staged in os.fwalk(".", dir_fd=staging.fds[area]):
            dirs.sort()
            parts = Path(top).parts  # below the area: () for the area itself
            if parts[:1] != account:
                account = parts[:1]
                folders.clear()  # one account's folders at a time: bounded memory
            with _stop_at_symlink(area):
                live = nofollow.open_path(root, parts)
            if live is None:
                where = "/".join((area, *parts))
                raise NotADirectoryError(errno.ENOTDIR, "not a directory on this relay", where)
            with nofollow.closing(live), _stop_at_symlink(area, *parts):
                for name in dirs:
                    if nofollow.lstat(live, name) is None:
                        first_change()
                        _make_dir(staged, live, name)
                for name in sorted(files):
                    if area == fmt.MAILBOXES and fmt.is_message("/".join((area, *parts, name))):
                        folder = parts[:-1]
                        if folder not in folders:
                            with _stop_at_symlink(area):
                                folders[folder] = _unique_parts(root, folder)
                        if fmt.unique_part(name) in folders[folder]:
                            report.unchanged += 1  # here already, perhaps with other flags
                            continue
                        folders[folder].add(fmt.unique_part(name))
                    self._put(staged, live, name, area, report, archive_wins, first_change)

    def _put(
        self,
        staged: int,
        live: int,
        name: str,
        area: str,
        report: Report,
        archive_wins: bool,
        first_change: Callable[[], None],
    ) -> None:
        """One staged file into the live directory: added, replaced or left as it is."""
        here = nofollow.lstat(live, name)
        if nofollow.is_symlink(here):
            raise nofollow.SymlinkMet(name)
        if here is None:
            first_change()
            _install(staged, live, name)
            report.installed += 1
            report.areas.add(area)
        elif _same(staged, name, live, name):
            report.unchanged += 1
        elif archive_wins:
            first_change()
            _replace(staged, live, name, here)
            report.replaced += 1
            report.areas.add(area)
        else:
            report.kept += 1


def _unique_parts(root: int, folder: tuple[str, ...]) -> set[str]:
    """The unique parts of the messages in a live folder's new/ and cur/."""
    found: set[str] = set()
    for sub in ("new", "cur"):
        fd = nofollow.open_path(root, (*folder, sub))
        if fd is not None:
            with nofollow.closing(fd):
                found.update(fmt.unique_part(name) for name in os.listdir(fd))
    return found


@contextlib.contextmanager
def _stop_at_symlink(area: str, *within: str) -> Iterator[None]:
    """A symlink met below `area`/`within` becomes one line: where, the address left out."""
    try:
        yield
    except nofollow.SymlinkMet as e:
        where = re.sub(r"[^/]*@[^/]*", "<account>", "/".join((area, *within, str(e))))
        raise ArchiveError(
            f"{where} is a symlink on this relay: not followed, the restore stopped there "
            "(remove it, then restore again: what is in place stays)"
        ) from None
