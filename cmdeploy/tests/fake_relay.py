"""A relay that exists only as pyinfra facts, for planning the real deploy against it.

`FakeRelay` answers `host.get_fact` from what a test put into it: files with contents, owners
and modes, directories, installed Debian packages, running units, users, command outputs, and
/etc/os-release of Debian 12 or 13. Nothing connects anywhere and no command runs.

`plan` calls `cmdeploy.deploy.deploy` in a pyinfra State of its own (pyinfra's API mode), so
pyinfra's own planner compares every file with the relay's facts. It then decides each planned
operation as pyinfra's executor would, in order: its `_if` conditions evaluated against the
operations before it, and the operation counted as changed when it yields commands (a restart
hangs on `any_changed` of its files; the policy-rc.d hold on `did_change`). The commands are
never run: `Run` lists what would change. `apply` writes a run's uploads, modes, owners,
directories, markers and units into the relay, so a test can plan again on the relay the run
left behind.
"""

from __future__ import annotations

import hashlib
import io
import re
import shlex
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from pyinfra.api import Config, Inventory, State
from pyinfra.api.command import FileUploadCommand, PyinfraCommand
from pyinfra.connectors.util import CommandOutput
from pyinfra.context import ctx_host, ctx_state

from cmdeploy.deploy import deploy
from cmdeploy.steps import DeployInputs

NOW = datetime(2026, 6, 1, 12, 0)  # the relay's clock; every file was written then
OS_RELEASE = {
    "12": 'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nID=debian\nVERSION_ID="12"\n',
    "13": 'PRETTY_NAME="Debian GNU/Linux 13 (trixie)"\nID=debian\nVERSION_ID="13"\n',
}


@dataclass
class Node:
    """A file (`data` not None) or a directory on the relay."""

    data: bytes | None
    user: str = "root"
    group: str = "root"
    mode: int = 644


@dataclass
class FakeRelay:
    debian: str = "12"
    nodes: dict[str, Node] = field(default_factory=dict)
    packages: dict[str, list[str]] = field(default_factory=dict)
    running: set[str] = field(default_factory=set)  # units, running and enabled
    users: dict[str, dict[str, Any]] = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)  # Command fact: command -> output

    def __post_init__(self) -> None:
        self.write("/etc/os-release", OS_RELEASE[self.debian])
        # what any Debian has: the deploy's files go into these
        for path in ("/etc", "/etc/systemd/system", "/usr/local/lib", "/var/lib", "/home"):
            self.mkdir(path, mode=755)

    def write(
        self, path: str, text: str | bytes, user: str = "root", group: str = "root", mode: int = 644
    ) -> None:
        data = text.encode() if isinstance(text, str) else text
        self.nodes[path] = Node(data, user, group, mode)

    def mkdir(self, path: str, user: str = "root", group: str = "root", mode: int = 755) -> None:
        for parent in reversed(Path(path).parents):
            self.nodes.setdefault(str(parent), Node(None, mode=755))
        self.nodes.setdefault(path, Node(None, user, group, mode))

    def text(self, path: str) -> str | None:
        node = self.nodes.get(path)
        return None if node is None or node.data is None else node.data.decode()

    # pyinfra's facts, by the name of their class
    def get_fact(self, fact: type, *args: Any, **kwargs: Any) -> Any:
        answer = getattr(self, f"fact_{fact.__name__}", None)
        if answer is None:
            raise AssertionError(f"the fake relay has no answer for the fact {fact.__name__}")
        return answer(*args, **kwargs)

    def _stat(self, path: str, directory: bool) -> dict[str, Any] | bool | None:
        node = self.nodes.get(str(path))
        if node is None:
            return None
        if (node.data is None) != directory:
            return False  # pyinfra's answer for "exists, but of the other kind"
        size = 0 if node.data is None else len(node.data)
        return {
            "user": node.user,
            "group": node.group,
            "mode": node.mode,
            "size": size,
            "mtime": NOW,
        }

    def fact_File(self, path: str) -> dict[str, Any] | bool | None:
        return self._stat(path, directory=False)

    def fact_Directory(self, path: str) -> dict[str, Any] | bool | None:
        return self._stat(path, directory=True)

    def fact_Link(self, path: str) -> None:
        return None

    def fact_FileContents(self, path: str) -> list[str] | None:
        text = self.text(path)
        return None if text is None else text.splitlines()

    def fact_Sha1File(self, path: str) -> str | None:
        node = self.nodes.get(path)
        return (
            None
            if node is None or node.data is None
            else hashlib.sha1(node.data, usedforsecurity=False).hexdigest()
        )

    def fact_Md5File(self, path: str) -> None:
        return None  # asked only when Sha1File had no answer: the file is missing

    fact_Sha256File = fact_Md5File

    def fact_FindInFile(self, path: str, pattern: str, **_: Any) -> list[str] | None:
        text = self.text(path)
        if text is None:
            return None
        # grep's basic expressions as far as the deploy writes them
        regex = pattern.replace("[[:space:]]", "[ \t]")
        return [line for line in text.splitlines() if re.search(regex, line)]

    def fact_FindFiles(self, path: str, **_: Any) -> list[str]:
        return [p for p, node in self.nodes.items() if p.startswith(path + "/") and node.data]

    def fact_FindLinks(self, path: str, **_: Any) -> list[str]:
        return []

    def fact_DebPackages(self) -> dict[str, list[str]]:
        return self.packages

    def fact_SystemdStatus(self, services: list[str], **_: Any) -> dict[str, bool]:
        return {s: s in self.running for s in services}

    fact_SystemdEnabled = fact_SystemdStatus

    def fact_Users(self) -> dict[str, dict[str, Any]]:
        return self.users

    def fact_Groups(self) -> list[str]:
        return [u["group"] for u in self.users.values()]

    def fact_Command(self, command: str) -> str:
        return self.outputs.get(command, "")

    def fact_Date(self) -> datetime:
        return NOW

    def fact_Os(self) -> str:
        return "Linux"

    def fact_LinuxName(self) -> str:
        return "Debian"

    def fact_Which(self, command: str) -> str:
        return f"/usr/bin/{command}"

    def fact_TmpDir(self) -> str:
        return "/tmp"


@dataclass
class Step:
    name: str
    commands: list[PyinfraCommand]

    def lines(self) -> list[str]:
        return [c.get_raw_value() for c in self.commands if not isinstance(c, FileUploadCommand)]


@dataclass
class Run:
    """The operations of a planned deploy, in order, and what each would do."""

    planned: list[Step]

    @property
    def changes(self) -> list[str]:
        return [step.name for step in self.planned if step.commands]

    def changed(self, name: str) -> bool:
        return name in self.changes

    @property
    def restarts(self) -> set[str]:
        return {n.removeprefix("Restart ") for n in self.changes if n.startswith("Restart ")}

    @property
    def names(self) -> list[str]:
        return [step.name for step in self.planned]


def plan(relay: FakeRelay, inputs: DeployInputs) -> Run:
    """The deploy planned against `relay`, each operation decided as the executor would."""
    inventory = Inventory((["relay.test"], {}))
    state = State(inventory, Config())
    host = inventory.get_host("relay.test")
    host.get_fact = relay.get_fact  # type: ignore[method-assign]  # every fact from the fake
    steps = []
    with ctx_state.use(state), ctx_host.use(host):
        deploy(inputs)
        # what pyinfra's executor does with each operation, but for running its commands
        state.is_executing = True
        for op_hash in state.get_op_order():
            (name,) = state.get_op_meta(op_hash).names
            data = state.get_op_data_for_host(host, op_hash)
            commands = list(data.command_generator())
            data.operation_meta.set_complete(True, commands, CommandOutput([]))
            steps.append(Step(name, commands))
    return Run(steps)


def apply(relay: FakeRelay, run: Run) -> None:
    """What `run` leaves on the relay: files, modes, owners, directories, markers, packages,
    users and units; what the deploy's own shell steps make (key, certificate, venv, Dovecot
    plugin) a test puts in place itself."""
    for step in run.planned:
        for command in step.commands:
            if isinstance(command, FileUploadCommand):
                src = command.src
                data = (
                    src.getvalue().encode()
                    if isinstance(src, io.StringIO)
                    else Path(src).read_bytes()
                )
                old = relay.nodes.get(command.dest)
                relay.nodes[command.dest] = (
                    Node(data) if old is None else Node(data, old.user, old.group, old.mode)
                )
                continue
            apply_line(relay, command.get_raw_value())


def apply_line(relay: FakeRelay, line: str) -> None:
    """The few commands whose effect the fake keeps; any other it leaves to the test."""
    try:
        argv = shlex.split(line)
    except ValueError:  # shell the fake does not model
        return
    if "apt-get" in argv and "install" in argv:
        named = argv[argv.index("install") + 1 :]
        relay.packages.update({p: ["1.0"] for p in named if not p.startswith("-")})
        return
    match argv:
        case ["useradd", *options, user]:
            add_user(relay, user, options)
        case ["mkdir", "-p", path]:
            relay.mkdir(path)
        case ["chmod", mode, path] if path in relay.nodes:
            relay.nodes[path].mode = int(mode)
        case ["chown", owner, path] if path in relay.nodes:
            user, _, group = owner.partition(":")
            relay.nodes[path].user = user
            relay.nodes[path].group = group or relay.nodes[path].group
        case ["touch", path]:
            if path not in relay.nodes:
                relay.write(path, b"")
        case ["rm", "-f", path]:
            relay.nodes.pop(path, None)
        case ["systemctl", "start" | "restart" | "reload-or-restart", unit]:
            relay.running.add(unit)
        case ["systemctl", "stop", unit]:
            relay.running.discard(unit)


def add_user(relay: FakeRelay, user: str, options: list[str]) -> None:
    """useradd's options as the deploy gives them: -d home, -s shell, -G groups, flags."""
    values = dict(zip(options, [*options[1:], ""], strict=True))
    relay.users[user] = {
        "home": values.get("-d"),
        "shell": values.get("-s"),
        "group": user,
        "groups": values["-G"].split(",") if "-G" in values else [],
    }
    if "-m" in options and values.get("-d"):
        relay.mkdir(values["-d"], user=user, group=user)
