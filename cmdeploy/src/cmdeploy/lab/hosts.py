"""Lab hosts: real Debian 12 or 13 systems booted with systemd-nspawn, each in its own namespace.

A minimal Debian is bootstrapped once per release into `<lab>/base` (12) or
`<lab>/base-trixie` (13), about a minute each, and copied per host.
Each host gets the lab's SSH key for root, the package proxy for apt, the lab DNS as its
resolver, and boots with systemd as PID 1 (`--register=no`: this machine has no system bus).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from ..release import SUPPORTED
from .net import GATEWAY, Namespace

# the base image's folder in the lab per Debian release (its suite: `release.SUPPORTED`)
BASE_DIRS = {"12": "base", "13": "base-trixie"}
INCLUDE = "systemd,systemd-sysv,dbus,openssh-server,python3,iproute2,ca-certificates"
PROXY_PORT = 8888
SSH_OPTIONS = [
    "-o",
    "BatchMode=yes",
    "-o",
    "StrictHostKeyChecking=no",
    "-o",
    "UserKnownHostsFile=/dev/null",
    "-o",
    "LogLevel=ERROR",
    "-o",
    "ConnectTimeout=5",
]


class HostError(Exception):
    pass


def ensure_base_image(lab: Path, log: Path, debian: str = "12") -> Path:
    base = lab / BASE_DIRS[debian]
    if (base / "etc" / "debian_version").exists() and (base / ".complete").exists():
        return base
    shutil.rmtree(base, ignore_errors=True)
    suite = SUPPORTED[debian]
    with open(log, "ab") as out:
        result = subprocess.run(
            ["debootstrap", "--variant=minbase", f"--include={INCLUDE}", suite, str(base)],
            stdout=out,
            stderr=subprocess.STDOUT,
            check=False,
        )
    if result.returncode != 0:
        raise HostError(f"debootstrap of the base image failed; see {log}")
    (base / ".complete").touch()
    return base


def ensure_ssh_key(lab: Path) -> Path:
    key = lab / "id_ed25519"
    if not key.exists():
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    return key


def prepare_tree(base: Path, tree: Path, hostname: str, key: Path) -> None:
    fresh = not (tree / ".complete").exists()
    if fresh:
        shutil.rmtree(tree, ignore_errors=True)
        subprocess.run(["cp", "-a", str(base), str(tree)], check=True)
        (tree / ".complete").touch()
    (tree / "etc" / "hostname").write_text(hostname + "\n")
    ssh_dir = tree / "root" / ".ssh"
    ssh_dir.mkdir(mode=0o700, exist_ok=True)
    (ssh_dir / "authorized_keys").write_text(key.with_suffix(".pub").read_text())
    proxy = f"http://{GATEWAY}:{PROXY_PORT}"
    (tree / "etc" / "apt" / "apt.conf.d" / "90chatmail-lab-proxy").write_text(
        f'Acquire::http::Proxy "{proxy}";\nAcquire::https::Proxy "{proxy}";\n'
    )
    if fresh:
        # the lab's DNS until the deploy points the relay at its own unbound; a tree booted
        # again (a reboot) keeps what the deploy wrote, as a server's disk does
        resolv = tree / "etc" / "resolv.conf"
        resolv.unlink(missing_ok=True)
        resolv.write_text(f"nameserver {GATEWAY}\n")


# The processes this one started (hosts, the lab's services): they outlive it (the lab
# records their pids), and a Popen collected while its process runs would warn about it.
_STARTED: list[subprocess.Popen[bytes]] = []


def start_process(argv: list[str], log: Path, env: dict[str, str] | None = None) -> int:
    """Start `argv` in the background, its output appended to `log`; its pid."""
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env=env,
        )
    _STARTED.append(proc)
    return proc.pid


def boot(tree: Path, ns: Namespace, name: str, log: Path) -> int:
    """Start the host; its nspawn process id (the lab records it to stop it later)."""
    argv = [
        "systemd-nspawn",
        "-D",
        str(tree),
        "--boot",
        "--register=no",
        "--keep-unit",
        f"--network-namespace-path=/run/netns/{ns.name}",
        f"--machine={name}",
        "--console=passive",
        # the host's resolv.conf is not the lab's: without this nspawn copies it in at
        # every boot, and a rebooted relay lost its own resolver (its unbound)
        "--resolv-conf=off",
    ]
    return start_process(argv, log)


def ssh(
    key: Path, address: str, command: str, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ssh", *SSH_OPTIONS, "-i", str(key), f"root@{address}", command],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def wait_ready(key: Path, address: str, timeout: float = 120) -> None:
    """Until systemd in the host says it is up (or degraded) and SSH answers."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = ssh(key, address, "systemctl is-system-running", timeout=10).stdout.strip()
        except subprocess.TimeoutExpired:
            state = ""
        if state in ("running", "degraded"):
            return
        time.sleep(1)
    raise HostError(f"lab host {address} did not come up within {timeout:g} s")


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie waiting for its parent counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def power_off(pid: int, timeout: float = 30) -> None:
    """End the host whose nspawn process is `pid` at once: SIGKILL to its init ends every
    process of its PID namespace, as pulling the plug would (the disk keeps what was written)."""
    children = subprocess.run(
        ["ps", "--ppid", str(pid), "-o", "pid="], capture_output=True, text=True, check=False
    ).stdout.split()
    for child in children:
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(child), signal.SIGKILL)
    stop_process(pid, timeout)


def finish_reboot(pid: int, grace: float = 60) -> bool:
    """Wait for a host told to reboot to end its nspawn process `pid`; after `grace` seconds
    cut its power (`power_off`), as a machine's reset would. True if the power was cut.

    Debian 13's systemd in the lab's containers cannot end processes whose control groups
    are not its to kill here, so its shutdown can hang once every service has stopped; a real
    server's does not. The services' own stop sequence has run either way."""
    deadline = time.monotonic() + grace
    while alive(pid):
        if time.monotonic() > deadline:
            power_off(pid)
            return True
        time.sleep(0.5)
    return False


def stop_process(pid: int, timeout: float = 30) -> None:
    """SIGTERM (nspawn turns it into a clean shutdown of the host), SIGKILL after `timeout`."""
    if not alive(pid):
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive(pid):
            return
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
