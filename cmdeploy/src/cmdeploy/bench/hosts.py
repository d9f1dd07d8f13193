"""The hosts a bench run talks to over SSH: chatmail relays and the bare baseline (issue 7).

A `BenchHost` knows where to connect (address, SNI name), where its maildirs live, and runs
`remote_helper.py` on itself for facts, delivery counts, CPU and memory samples, and the removal
of the bench's accounts. SSH failures are retried a few times (lab relays are sometimes being
redeployed) and then become one `BenchError` that says what to check.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chatmaild.config import Config, ConfigError, read_config

from .protocol import Endpoint

HELPER = Path(__file__).with_name("remote_helper.py")
REMOTE_INI = "/usr/local/lib/chatmaild/chatmail.ini"
SSH_ATTEMPTS = 3


class BenchError(Exception):
    """Something that stops the bench; the message is one paragraph for the operator."""


@dataclass
class BenchHost:
    label: str  # "relay1", "relay2", "bare"
    domain: str  # SNI name and address domain
    ip: str
    ssh_key: Path | None
    mailboxes: str = ""  # remote directory holding one maildir per address
    facts: dict[str, Any] = field(default_factory=dict)
    clock_offset: float = 0.0  # host clock minus ours, seconds
    # lab hosts run on this machine's kernel: one clock, nothing to estimate
    same_clock: bool = True
    config: Config | None = None  # a relay's deployed chatmail.ini (None on the bare host)

    def chatmail_config(self) -> Config:
        if self.config is None:
            raise BenchError(f"{self.label} is not a chatmail relay")
        return self.config

    @property
    def endpoint(self) -> Endpoint:
        return Endpoint(self.ip, self.domain)

    def ssh_argv(self, command: str) -> list[str]:
        from ..lab.hosts import SSH_OPTIONS  # batch mode, lab host keys not remembered

        options = list(SSH_OPTIONS)
        if self.ssh_key:
            options += ["-i", str(self.ssh_key)]
        return ["ssh", *options, f"root@{self.ip}", command]

    def ssh(self, command: str, stdin: str = "", timeout: float = 120) -> str:
        """Run `command` as root; retried while SSH itself fails (exit 255)."""
        detail = ""
        for attempt in range(SSH_ATTEMPTS):
            try:
                result = subprocess.run(
                    self.ssh_argv(command),
                    input=stdin,
                    capture_output=True,
                    text=True,
                    timeout=timeout,
                    check=False,
                )
            except subprocess.TimeoutExpired:
                detail = f"no answer within {timeout:g} s"
                continue
            if result.returncode == 0:
                return result.stdout
            detail = (result.stderr.strip().splitlines() or [f"exit {result.returncode}"])[-1]
            if result.returncode != 255:
                break
            time.sleep(2 * (attempt + 1))
        raise BenchError(
            f"cannot run a command on {self.label} ({self.domain}, {self.ip}) over SSH: "
            f"{detail}. Check that `ssh root@{self.ip}` works without a password prompt "
            "(for the lab: that `cmdeploy lab status` lists the relay)."
        )

    def helper(self, *args: str, stdin: str = "", timeout: float = 120) -> dict[str, Any]:
        source = HELPER.read_text()
        command = "python3 -c " + shlex.quote(source) + " " + " ".join(map(shlex.quote, args))
        out = self.ssh(command, stdin=stdin, timeout=timeout)
        try:
            data: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
        except (ValueError, IndexError):
            raise BenchError(
                f"{self.label}: unexpected answer to `{args[0]}`: {out[:200]!r}"
            ) from None
        return data

    def read_facts(self) -> dict[str, Any]:
        before = time.time()
        self.facts = self.helper("facts")
        after = time.time()
        remote_clock = self.facts.pop("clock")
        if not self.same_clock:
            self.clock_offset = remote_clock - (before + after) / 2
        return self.facts

    def to_host_clock(self, local_wall: float) -> float:
        return local_wall + self.clock_offset

    def deliveries(self, names: list[str], since_host_clock: float) -> dict[str, float]:
        """Message files (`mailbox/name`) delivered into the named mailboxes since a moment,
        with their delivery times on the host's clock."""
        data = self.helper(
            "deliveries", self.mailboxes, f"{since_host_clock:.4f}", stdin="\n".join(names)
        )
        return {key: float(t) for key, t in data["files"].items()}

    def journal(self, since_host_clock: float) -> list[tuple[float, str, str]]:
        """(time on the host's clock, source, text) of the mail path's log lines since then."""
        data = self.helper("journal", f"{since_host_clock:.6f}")
        return [(float(t), str(source), str(text)) for t, source, text in data["lines"]]

    def cpu_sample(self) -> dict[str, Any]:
        return self.helper("cpu")

    def load_1m(self) -> float:
        return float(self.helper("load")["load_1m"])

    def memory_sample(self) -> dict[str, Any]:
        return self.helper("memory")

    def message_ids(self, names: list[str]) -> dict[str, int]:
        """Message-ID -> how many files of the named mailboxes hold it."""
        data = self.helper("message_ids", self.mailboxes, stdin="\n".join(names), timeout=300)
        return {str(k): int(v) for k, v in data["ids"].items()}

    def accounts_intact(self, names: list[str]) -> dict[str, Any]:
        return self.helper("accounts_intact", self.mailboxes, stdin="\n".join(names))

    def reboot(self) -> tuple[float, bool]:
        """Reboot the lab host and wait until it answers SSH again: the seconds it took, and
        whether the lab had to cut the power at the end of the shutdown.

        A lab host is a `systemd-nspawn --boot` child of the lab: rebooting ends that process,
        and the lab boots the tree again, as a machine's firmware would. A Debian 13 host's
        shutdown can hang in the lab once its services have stopped (`finish_reboot`)."""
        from .. import lab
        from ..lab import hosts as lab_hosts

        state = lab.State.load()
        relay = next(r for r in state.relays if r.ip == self.ip)
        start = time.monotonic()
        subprocess.run(self.ssh_argv("systemctl reboot"), capture_output=True, timeout=60)
        power_cut = lab_hosts.finish_reboot(relay.pid)
        lab.up(len(state.relays), deploy=False)
        return time.monotonic() - start, power_cut

    def remove_mailboxes(self, names: list[str]) -> dict[str, Any]:
        return self.helper("remove", self.mailboxes, stdin="\n".join(names), timeout=300)


def relay_config(host: BenchHost) -> Config:
    """The relay's deployed chatmail.ini, read over SSH (what its services really use)."""
    text = host.ssh(f"cat {REMOTE_INI}")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "chatmail.ini"
        path.write_text(text)
        try:
            return read_config(path)
        except ConfigError as e:
            raise BenchError(f"{host.label}: its {REMOTE_INI} does not parse: {e}") from None


def lab_relays() -> list[BenchHost]:
    """The lab's relays as `cmdeploy lab status --json` describes them (read anew each run)."""
    from .. import lab

    if not (lab.LAB / "state.json").exists():
        return []
    info = lab.status(lab.State.load())
    key = Path(str(info["ssh_key"]))
    relays: list[dict[str, str]] = info["relays"]  # type: ignore[assignment]
    return [
        BenchHost(f"relay{i}", r["domain"], r["ip"], key) for i, r in enumerate(relays, start=1)
    ]
