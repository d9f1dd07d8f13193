"""Runs ON a benchmarked host (relay or bare baseline), sent over SSH as `python3 -c` (issue 7).

Standard library only: a relay has Debian's python3, the bare host has it from the base image.
Each action prints one JSON object. Mailbox names come on stdin, one a line, and must look
like an address: nothing here follows a name with `/` or `..`.

    facts                       CPU count, kernel, postfix/dovecot versions, clock
    deliveries ROOT SINCE       files in new/ and cur/ of the named maildirs with mtime >= SINCE
    cpu                         CPU time per systemd unit (cgroup v2) and per process name
    memory                      PSS of Dovecot's processes, process counts, container memory
    load                        the 1-minute load average (doveauth refuses creations above a limit)
    remove ROOT                 delete the named mailboxes (the bench's own accounts)
    journal SINCE               the mail path's log lines since a moment: time, source, text
    hand_overs SINCE            the journal's counts of repeated hand-overs (the fault run)
    disk_small ROOT BYTES       move the mailboxes onto a tmpfs of their own (the disk-full fault)
    disk_fill / disk_free       fill that tmpfs to the last byte / empty it again
    disk_restore ROOT           the mailboxes back onto the relay's disk, the tmpfs gone
"""

import contextlib
import ctypes
import functools
import gzip
import json
import os
import re
import shutil
import subprocess
import sys
import time
import zlib
from collections.abc import Iterator
from typing import Any

NAME = re.compile(r"^[A-Za-z0-9._@\[\]-]+$")
CGROUP_ROOTS = ("/sys/fs/cgroup/unified/system.slice", "/sys/fs/cgroup/system.slice")


def names() -> list[str]:
    found: list[str] = []
    for line in sys.stdin.read().split():
        if NAME.match(line) and ".." not in line:
            found.append(line)
    return found


def facts() -> dict[str, Any]:
    versions: dict[str, str | None] = {}
    for package in ("postfix", "dovecot-core", "nginx", "opendkim"):
        result = subprocess.run(
            ["dpkg-query", "-W", "-f=${Version}", package],
            capture_output=True,
            text=True,
            check=False,
        )
        versions[package] = result.stdout.strip() if result.returncode == 0 else None
    with open("/proc/meminfo") as f:
        memory_kb = int(f.readline().split()[1])
    try:
        # Dovecot needs one inotify instance per IDLE session to notify and to hibernate
        with open("/proc/sys/fs/inotify/max_user_instances") as f:
            inotify_instances: int | None = int(f.read())
    except (OSError, ValueError):
        inotify_instances = None
    return {
        "cpus": os.cpu_count(),
        "kernel": os.uname().release,
        "packages": versions,
        "memory_total_mb": memory_kb // 1024,
        "inotify_max_user_instances": inotify_instances,
        "clock": time.time(),
    }


def deliveries(root: str, since: float) -> dict[str, Any]:
    """Each message file as `mailbox/unique name` (without the `:2,...` flags, which change
    when a client reads it) with its mtime, the moment Dovecot delivered it."""
    files: dict[str, float] = {}
    for name in names():
        for sub in ("new", "cur"):
            try:
                entries = os.scandir(os.path.join(root, name, sub))
            except OSError:
                continue
            with entries:
                for entry in entries:
                    try:
                        mtime = entry.stat().st_mtime
                    except OSError:
                        continue
                    if mtime >= since:
                        files[name + "/" + entry.name.split(":")[0]] = round(mtime, 4)
    return {"files": files}


ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
HEAD_BYTES = 16384


class ZstdError(Exception):
    pass


class _ZstdBuffer(ctypes.Structure):
    # ZSTD_inBuffer and ZSTD_outBuffer share this layout: pointer, size, position
    _fields_ = (("ptr", ctypes.c_void_p), ("size", ctypes.c_size_t), ("pos", ctypes.c_size_t))


@functools.cache
def _libzstd() -> ctypes.CDLL:
    # Dovecot's zlib plugin links libzstd, so a relay has it; Debian's python3 has no module
    lib = ctypes.CDLL("libzstd.so.1")
    lib.ZSTD_createDStream.restype = ctypes.c_void_p
    lib.ZSTD_freeDStream.argtypes = [ctypes.c_void_p]
    lib.ZSTD_decompressStream.restype = ctypes.c_size_t
    lib.ZSTD_decompressStream.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
    lib.ZSTD_isError.argtypes = [ctypes.c_size_t]
    return lib


def zstd_head(data: bytes, limit: int = HEAD_BYTES) -> bytes:
    """The first `limit` bytes (or fewer) of a zstd stream, as Dovecot writes with
    `zlib_save = zstd`."""
    lib = _libzstd()
    stream = lib.ZSTD_createDStream()
    if not stream:
        raise ZstdError("no memory")
    try:
        source = ctypes.create_string_buffer(data, len(data))
        target = ctypes.create_string_buffer(limit)
        inbuf = _ZstdBuffer(ctypes.cast(source, ctypes.c_void_p), len(data), 0)
        outbuf = _ZstdBuffer(ctypes.cast(target, ctypes.c_void_p), limit, 0)
        while outbuf.pos < limit:
            before = (inbuf.pos, outbuf.pos)
            ret = lib.ZSTD_decompressStream(stream, ctypes.byref(outbuf), ctypes.byref(inbuf))
            if lib.ZSTD_isError(ret):
                raise ZstdError("damaged stream")
            if ret == 0 or (inbuf.pos, outbuf.pos) == before:
                break  # the frame's end, or the file's
        return target.raw[: outbuf.pos]
    finally:
        lib.ZSTD_freeDStream(stream)


def _message_id(path: str) -> str | None:
    """The Message-ID of a maildir file: Dovecot's zlib plugin stores it zstd- or (before
    the relay switched) gzip-compressed, or plain."""
    with open(path, "rb") as f:
        head = f.read(4)
        f.seek(0)
        if head.startswith(ZSTD_MAGIC):
            text = zstd_head(f.read())
        elif head.startswith(b"\x1f\x8b"):
            text = gzip.GzipFile(fileobj=f).read(HEAD_BYTES)
        else:
            text = f.read(HEAD_BYTES)
    for line in text.split(b"\r\n\r\n", 1)[0].splitlines():
        if line.lower().startswith(b"message-id:"):
            return line.split(b":", 1)[1].strip().strip(b"<>").decode(errors="replace")
    return None


def message_ids(root: str) -> dict[str, Any]:
    """How many files of the named mailboxes hold each Message-ID (a copy counts twice)."""
    ids: dict[str, int] = {}
    unreadable = 0
    for name in names():
        for sub in ("new", "cur"):
            try:
                entries = list(os.scandir(os.path.join(root, name, sub)))
            except OSError:
                continue
            for entry in entries:
                try:
                    msgid = _message_id(entry.path)
                except (OSError, EOFError, gzip.BadGzipFile, zlib.error, ZstdError):
                    unreadable += 1
                    continue
                if msgid is not None:
                    ids[msgid] = ids.get(msgid, 0) + 1
    return {"ids": ids, "unreadable": unreadable}


def queue() -> dict[str, Any]:
    """Messages in Postfix's queues, by queue (no addresses)."""
    counts: dict[str, int] = {}
    out = subprocess.run(["postqueue", "-j"], capture_output=True, text=True, check=False).stdout
    for line in out.splitlines():
        with contextlib.suppress(ValueError, AttributeError):
            name = json.loads(line).get("queue_name", "?")
            counts[name] = counts.get(name, 0) + 1
    return {"messages": counts}


def accounts_intact(root: str) -> dict[str, Any]:
    """Whether each named account's password file holds one whole hash (not torn)."""
    torn = []
    checked = 0
    for name in names():
        checked += 1
        try:
            with open(os.path.join(root, name, "password"), "rb") as f:
                text = f.read()
        except OSError:
            torn.append(name)
            continue
        if not re.fullmatch(rb"\{SHA512-CRYPT\}\$6\$[./A-Za-z0-9]+\$[./A-Za-z0-9]{86}\n?", text):
            torn.append(name)
    return {"checked": checked, "intact": checked - len(torn), "torn": len(torn)}


def _proc_stat(pid: str) -> tuple[str, int, int]:
    with open(f"/proc/{pid}/stat") as f:
        text = f.read()
    comm = text[text.index("(") + 1 : text.rindex(")")]
    fields = text[text.rindex(")") + 2 :].split()
    # utime, stime, cutime, cstime are fields 14-17 of stat(5); fields[0] is field 3
    return comm, sum(int(x) for x in fields[11:15]), int(fields[1])


def _process_name(pid: str, comm: str) -> str:
    """The comm, except for interpreters: there the script's name (filtermail, doveauth...)."""
    if not comm.startswith("python"):
        return comm
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
    except OSError:
        return comm
    script = argv[1] if len(argv) > 1 else b""
    return os.path.basename(script.decode(errors="replace")) or comm


def _processes() -> Iterator[tuple[str, str, int]]:
    """(pid, comm, CPU ticks incl. reaped children) of every process still there."""
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            comm, used, _ppid = _proc_stat(pid)
        except (OSError, ValueError, IndexError):
            continue
        yield pid, comm, used


def _holds_others(root: str) -> bool:
    """Whether a cgroup under `root` holds processes of another PID namespace (listed as 0).
    Lab hosts booted where no systemd runs share one cgroup tree: a unit's usage is then that
    of every host's unit of the same name, not this host's."""
    for path, _dirs, files in os.walk(root):
        if "cgroup.procs" not in files:
            continue
        try:
            with open(os.path.join(path, "cgroup.procs")) as f:
                if any(line.strip() == "0" for line in f):
                    return True
        except OSError:
            continue
    return False


def cpu() -> dict[str, Any]:
    units: dict[str, float] = {}
    shared = False
    for root in CGROUP_ROOTS:
        if not os.path.isdir(root):
            continue
        shared = _holds_others(root)
        if shared:
            break  # per process instead (this namespace's processes and their reaped children)
        for entry in os.scandir(root):
            try:
                with open(os.path.join(entry.path, "cpu.stat")) as f:
                    stat = dict(line.split() for line in f if line.strip())
            except OSError:
                continue
            units[entry.name] = int(stat.get("usage_usec", 0)) / 1e6
        break
    ticks = os.sysconf("SC_CLK_TCK")
    processes: dict[str, float] = {}
    for pid, comm, used in _processes():
        name = _process_name(pid, comm)
        processes[name] = processes.get(name, 0.0) + used / ticks
    with open("/proc/stat") as f:
        first = f.readline().split()[1:]
    busy = sum(int(x) for i, x in enumerate(first) if i not in (3, 4)) / ticks  # not idle/iowait
    return {
        "units": units,
        "units_shared": shared,
        "processes": processes,
        "busy": busy,
        "clock": time.time(),
    }


def _pss_kb(pid: str) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _in_dovecot(pid: str) -> bool:
    try:
        with open(f"/proc/{pid}/cgroup") as f:
            return "dovecot.service" in f.read()
    except OSError:
        return False


def memory() -> dict[str, Any]:
    dovecot_kb = 0
    all_kb = 0
    counts: dict[str, int] = {}
    pss_by_comm: dict[str, int] = {}
    for pid, comm, _used in _processes():
        pss = _pss_kb(pid)
        all_kb += pss
        if _in_dovecot(pid):
            dovecot_kb += pss
            counts[comm] = counts.get(comm, 0) + 1
            pss_by_comm[comm] = pss_by_comm.get(comm, 0) + pss
    container: int | None = None
    try:
        with open("/sys/fs/cgroup/memory/memory.usage_in_bytes") as f:
            usage = int(f.read())
        with open("/sys/fs/cgroup/memory/memory.stat") as f:
            stat = dict(line.split() for line in f if line.strip())
        # the "working set": what the kernel could not simply drop (as container tools count)
        container = usage - int(stat.get("total_inactive_file", 0))
    except (OSError, ValueError):
        pass
    return {
        "dovecot_pss_kb": dovecot_kb,
        "all_pss_kb": all_kb,
        "dovecot_processes": counts,
        "dovecot_pss_kb_by_process": pss_by_comm,
        "container_bytes": container,
    }


def remove(root: str) -> dict[str, Any]:
    removed = 0
    left: list[str] = []
    for name in names():
        path = os.path.join(root, name)
        shutil.rmtree(path, ignore_errors=True)
        if os.path.exists(path):
            left.append(name)
        else:
            removed += 1
    return {"removed": removed, "left": left}


# The log sources that mark a message's way through the relay (the hops of issue 12)
JOURNAL_SOURCES = ("postfix/qmgr", "postfix/lmtp", "postfix/transport/lmtp", "dovecot")
JOURNAL_UNITS = (
    "filtermail.service",
    "filtermail-incoming.service",
    "filtermail-transport.service",
)


def journal(since: float) -> dict[str, Any]:
    """(time, source, text) of the mail path's log lines since `since` (the host's clock)."""
    matches = [f"SYSLOG_IDENTIFIER={s}" for s in JOURNAL_SOURCES]
    matches += [f"_SYSTEMD_UNIT={u}" for u in JOURNAL_UNITS]
    argv = ["journalctl", "--no-pager", "-o", "json", f"--since=@{since:.6f}"]
    argv += ["--output-fields=__REALTIME_TIMESTAMP,SYSLOG_IDENTIFIER,_SYSTEMD_UNIT,MESSAGE"]
    result = subprocess.run(
        [*argv, *" + ".join(matches).split()], capture_output=True, text=True, check=False
    )
    lines = []
    for line in result.stdout.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        message = entry.get("MESSAGE")
        if not isinstance(message, str):
            continue  # binary: not one of the lines looked for
        unit = entry.get("_SYSTEMD_UNIT", "")
        source = unit if unit in JOURNAL_UNITS else entry.get("SYSLOG_IDENTIFIER", "")
        lines.append([int(entry["__REALTIME_TIMESTAMP"]) / 1e6, source, message[:300]])
    return {"lines": lines}


# --- the fault run's evidence for duplicates (issue 13) --------------------------------------
# A copy the client did not cause was handed over twice by a relay, and each way of doing so
# leaves its mark in a relay's journal:
# - Dovecot saved a copy whose LMTP reply Postfix never read (the fault cut the connection or
#   killed the lmtp client), so Postfix delivered it again: Dovecot's "saved mail to" lines
#   outnumber Postfix's LMTP "status=sent";
# - the sending relay's transport lost the peer's answer after the whole message was sent:
#   Postfix's own words for it, "message may be sent more than once";
# - the receiving relay's filtermail lost Postfix's reply after the end of DATA and answered
#   451, so the peer sent the message again (chatmaild.reinject.AFTER_END_OF_DATA).
HAND_OVERS = (
    ("saved", "dovecot", "saved mail to"),
    ("acknowledged", "postfix/lmtp", "status=sent"),
    ("sent_unsure", "postfix/transport/lmtp", "may be sent more than once"),
    ("queued_unsure", "filtermail-incoming.service", "re-injection failed after the end of DATA"),
)
# lines that never reached the journal: journald's rate limit, chatmail-postlog's drops
DROPPED = re.compile(r"^(?:Suppressed|chatmail-postlog: dropped) (\d+) (?:messages|line)")


def count_hand_overs(lines: list[list[Any]]) -> dict[str, int]:
    """`HAND_OVERS` counted in `journal`'s lines."""
    counts = {name: 0 for name, _, _ in HAND_OVERS}
    for _, source, text in lines:
        for name, wanted_source, phrase in HAND_OVERS:
            if source == wanted_source and phrase in text:
                counts[name] += 1
    return counts


def hand_overs(since: float) -> dict[str, Any]:
    """`HAND_OVERS` since a moment, and how many lines were lost on the way to the journal
    meanwhile (then the counts may be short, and the fault run does not rely on them)."""
    counts: dict[str, Any] = count_hand_overs(journal(since)["lines"])
    argv = ["journalctl", "--no-pager", "-o", "cat", f"--since=@{since:.6f}"]
    argv += ["SYSLOG_IDENTIFIER=systemd-journald", "+", "SYSLOG_IDENTIFIER=chatmail-postlog"]
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    counts["dropped"] = sum(
        int(m.group(1)) for m in map(DROPPED.match, result.stdout.splitlines()) if m
    )
    return counts


# --- the disk-full fault (issue 13) ----------------------------------------------------------
# Filling the relay's own disk would fill this machine's, which holds the lab. So for the
# phase the mailboxes live on a tmpfs of their own, its size the mail there plus a margin;
# filling that tmpfs is the full mail disk, felt by every process that writes a mailbox.
SMALL_DISK = "/run/chatmail-bench-disk"
SMALL_MAIL = SMALL_DISK + "/mail"  # bound over the mailboxes directory
BALLAST = SMALL_DISK + "/ballast"  # outside what the relay sees, so no service trips on it
# what writes into the mailboxes directory, stopped while it changes filesystem
MAILBOX_UNITS = (
    "dovecot.service",
    "doveauth.service",
    "chatmail-lastlogin.service",
    "chatmail-metadata.service",
)


def _run(*argv: str) -> None:
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(argv)}: {result.stderr.strip() or result.returncode}")


def _free_bytes(path: str) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def _mounted(path: str) -> bool:
    with open("/proc/self/mounts", encoding="utf-8") as f:
        return any(line.split()[1] == path for line in f)


def _tree_bytes(root: str) -> int:
    total = 0
    for top, _dirs, files in os.walk(root):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(top, name)).st_blocks * 512
    return total


def disk_small(root: str, margin: int) -> dict[str, Any]:
    """The mailboxes onto a tmpfs of (their size + `margin`) bytes, services stopped meanwhile."""
    if _mounted(root):
        raise SystemExit(f"{root} is already a mount point: an earlier disk fault left it so")
    size = _tree_bytes(root) + margin
    _run("systemctl", "stop", *MAILBOX_UNITS)
    try:
        os.makedirs(SMALL_DISK, exist_ok=True)
        _run("mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", SMALL_DISK)
        # cp -a keeps owners, modes and times: Dovecot and doveauth see the same tree
        _run("cp", "-a", root, SMALL_MAIL)
        _run("mount", "--bind", SMALL_MAIL, root)
    finally:
        _run("systemctl", "start", *MAILBOX_UNITS)
    return {"size": size, "free": _free_bytes(root)}


def disk_fill() -> dict[str, Any]:
    """Write the ballast until the tmpfs has no byte left (again if something was freed)."""
    chunk = b"\0" * (1 << 20)
    with open(BALLAST, "ab", buffering=0) as f:
        for size in (len(chunk), 4096, 1):
            with contextlib.suppress(OSError):  # ENOSPC: go on with smaller writes
                while True:
                    f.write(chunk[:size])
    return {"free": _free_bytes(SMALL_MAIL), "ballast": os.path.getsize(BALLAST)}


def disk_free() -> dict[str, Any]:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(BALLAST)
    # None: the tmpfs was never made (a setup that failed early)
    return {"free": _free_bytes(SMALL_MAIL) if os.path.isdir(SMALL_MAIL) else None}


def disk_restore(root: str) -> dict[str, Any]:
    """Copy what the tmpfs holds back onto the disk and swap it in for the old directory."""
    if not _mounted(root):
        return {"restored": False}
    staging, old = root + ".bench-restore", root + ".bench-old"
    for path in (staging, old):
        shutil.rmtree(path, ignore_errors=True)
    _run("systemctl", "stop", *MAILBOX_UNITS)
    try:
        _run("cp", "-a", SMALL_MAIL, staging)
        _run("umount", root)
        _run("umount", SMALL_DISK)
        os.rename(root, old)
        os.rename(staging, root)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        _run("systemctl", "start", *MAILBOX_UNITS)
    return {"restored": True}


def main() -> None:
    action, args = sys.argv[1], sys.argv[2:]
    if action == "facts":
        result: dict[str, Any] = facts()
    elif action == "deliveries":
        result = deliveries(args[0], float(args[1]))
    elif action == "load":
        result = {"load_1m": os.getloadavg()[0]}
    elif action == "cpu":
        result = cpu()
    elif action == "memory":
        result = memory()
    elif action == "remove":
        result = remove(args[0])
    elif action == "queue":
        result = queue()
    elif action == "message_ids":
        result = message_ids(args[0])
    elif action == "accounts_intact":
        result = accounts_intact(args[0])
    elif action == "journal":
        result = journal(float(args[0]))
    elif action == "hand_overs":
        result = hand_overs(float(args[0]))
    elif action == "disk_small":
        result = disk_small(args[0], int(args[1]))
    elif action == "disk_fill":
        result = disk_fill()
    elif action == "disk_free":
        result = disk_free()
    elif action == "disk_restore":
        result = disk_restore(args[0])
    else:
        raise SystemExit(f"unknown action {action}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
