"""`cmdeploy lab`: a miniature Internet on this machine, with relays deployed for real.

`up` makes, idempotently: a bridge and subnet that only the lab's namespaces use, a package
proxy, an authoritative DNS server for the lab zones, a fake push service, N relay hosts
(Debian 12 under systemd-nspawn, each in its own namespace) and a client namespace whose
resolver is the lab DNS. Each relay is then configured with `cmdeploy init`, deployed with
the ordinary `cmdeploy run`, and its zone (from `cmdeploy dns --zonefile`) is served by the
lab DNS. `down` removes everything `up` recorded, and nothing else; the base image stays
cached. Relays use the reserved `.test` TLD and self-signed TLS (`_relayN.test`).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from chatmaild.config import read_config, render_ini

from . import hosts, net, services

LAB = Path(os.environ.get("CMDEPLOY_LAB_DIR", "/var/lib/chatmail-lab"))
CLIENT_NETNS = "cmlab-client"
TOOLS = {
    "debootstrap": "debootstrap",
    "systemd-nspawn": "systemd-container",
    "tinyproxy": "tinyproxy",
    "nsd": "nsd",
    "ssh": "openssh-client",
}


class LabError(Exception):
    """The lab cannot be brought up or used; the message says why and what to do."""


@dataclass
class Relay:
    name: str
    domain: str
    ip: str
    netns: str
    config: str
    pid: int = 0


@dataclass
class State:
    relays: list[Relay] = field(default_factory=list)
    pids: dict[str, int] = field(default_factory=dict)
    netns: list[str] = field(default_factory=list)

    @classmethod
    def load(cls) -> State:
        path = LAB / "state.json"
        if not path.exists():
            return cls()
        data = json.loads(path.read_text())
        return cls(
            relays=[Relay(**r) for r in data.get("relays", [])],
            pids=data.get("pids", {}),
            netns=data.get("netns", []),
        )

    def save(self) -> None:
        (LAB / "state.json").write_text(json.dumps(asdict(self), indent=2) + "\n")


def say(text: str) -> None:
    print(f"lab: {text}", flush=True)


def ssh_env() -> dict[str, str]:
    return {
        "CMDEPLOY_SSH_KEY": str(LAB / "id_ed25519"),
        "CMDEPLOY_SSH_KNOWN_HOSTS": str(LAB / "known_hosts"),
    }


def ensure_tools() -> None:
    if os.geteuid() != 0:
        raise LabError("the lab needs root: it creates network namespaces and boots hosts")
    missing = sorted({pkg for tool, pkg in TOOLS.items() if shutil.which(tool) is None})
    if not missing:
        return
    say(f"installing {' '.join(missing)}")
    policy = Path("/usr/sbin/policy-rc.d")
    created = not policy.exists()
    if created:  # keep the packages from starting system-wide services
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
    try:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for argv in (
            ["apt-get", "update", "-qq"],
            ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing],
        ):
            if subprocess.run(argv, env=env, capture_output=True, check=False).returncode:
                raise LabError(f"could not install {' '.join(missing)} with apt-get")
    finally:
        if created:
            policy.unlink()


def relay_zones(state: State) -> dict[str, str]:
    """What the lab DNS serves: each relay's deployed zone, or just its address before."""
    serial = int(datetime.now(UTC).timestamp())
    zones = {}
    for relay in state.relays:
        deployed = LAB / f"{relay.name}.zone"
        records = (
            deployed.read_text() if deployed.exists() else f"{relay.domain}. IN A {relay.ip}\n"
        )
        zones[relay.domain] = services.soa_zone(relay.domain, serial, records)
    return zones


def restart_dns(state: State) -> None:
    if pid := state.pids.get("dns"):
        hosts.stop_process(pid)
    conf = services.write_dns(LAB, relay_zones(state))
    state.pids["dns"] = services.start_dns(LAB, conf)
    state.save()


def up(relay_count: int = 2, deploy: bool = True) -> State:
    ensure_tools()
    LAB.mkdir(parents=True, exist_ok=True)
    state = State.load()
    net.ensure_bridge()
    client = net.Namespace(CLIENT_NETNS, net.CLIENT_IP)
    client.ensure()
    netns_dir = Path("/etc/netns") / CLIENT_NETNS
    netns_dir.mkdir(parents=True, exist_ok=True)
    (netns_dir / "resolv.conf").write_text(f"nameserver {net.GATEWAY}\n")
    if CLIENT_NETNS not in state.netns:
        state.netns.append(CLIENT_NETNS)
    for name, start in (("proxy", services.start_proxy), ("push", services.start_push_fake)):
        if not hosts.alive(state.pids.get(name, 0)):
            state.pids[name] = start(LAB)
    state.save()

    say("base image (cached after the first time, about a minute)")
    base = hosts.ensure_base_image(LAB, LAB / "debootstrap.log")
    key = hosts.ensure_ssh_key(LAB)
    for i in range(1, relay_count + 1):
        name = f"relay{i}"
        relay = next((r for r in state.relays if r.name == name), None)
        if relay is None:
            relay = Relay(
                name,
                f"_{name}.test",
                str(net.SUBNET[10 + i]),
                f"cmlab-{name}",
                str(LAB / f"{name}.ini"),
            )
            state.relays.append(relay)
        ns = net.Namespace(relay.netns, relay.ip)
        ns.ensure()
        if relay.netns not in state.netns:
            state.netns.append(relay.netns)
        if not hosts.alive(relay.pid):
            say(f"booting {name} ({relay.ip})")
            hosts.prepare_tree(base, LAB / name, name, key)
            relay.pid = hosts.boot(LAB / name, ns, name, LAB / f"{name}.console.log")
        state.save()
    restart_dns(state)
    for relay in state.relays:
        hosts.wait_ready(key, relay.ip)
    if deploy:
        for relay in state.relays:
            deploy_relay(relay)
        restart_dns(state)
    return state


def deploy_relay(relay: Relay) -> None:
    """`cmdeploy init`, `run` and `dns --zonefile` for one lab relay, exactly as an operator."""
    ini = Path(relay.config)
    if not ini.exists():
        overrides = {"dns_forwarders": net.GATEWAY, "push_endpoint": services.push_url()}
        ini.write_text(render_ini(relay.domain, overrides))
    read_config(ini)  # a broken ini stops here with its own clear message
    env = {**os.environ, **ssh_env()}
    cmdeploy = [sys.executable, "-m", "cmdeploy.cli"]
    for args, what in (
        (["run", "--ssh-host", relay.ip], "deploying"),
        (
            ["dns", "--ssh-host", relay.ip, "--zonefile", str(LAB / f"{relay.name}.zone")],
            "writing the zone of",
        ),
    ):
        say(f"{what} {relay.domain}")
        log = LAB / f"{relay.name}.deploy.log"
        with open(log, "ab") as out:
            result = subprocess.run(
                [*cmdeploy, *args, "--config", str(ini)],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                check=False,
            )
        if result.returncode != 0:
            raise LabError(f"{what} {relay.domain} failed; see {log}")


def status(state: State) -> dict[str, object]:
    """The shape other tools rely on (issue: lab status --json)."""
    return {
        "relays": [
            {"domain": r.domain, "ip": r.ip, "ssh": f"root@{r.ip}", "config": r.config}
            for r in state.relays
        ],
        "dns": net.GATEWAY,
        "client_netns": CLIENT_NETNS,
        "ca_cert": None,  # self-signed relays; an ACME CA (pebble) comes later
        "push_fake": services.push_url(),
        "ssh_key": str(LAB / "id_ed25519"),
        "push_tokens": str(LAB / "push-tokens.log"),
    }


def down() -> None:
    state = State.load()
    for relay in state.relays:
        if relay.pid:
            say(f"stopping {relay.name}")
            hosts.stop_process(relay.pid)
    for pid in state.pids.values():
        hosts.stop_process(pid, timeout=10)
    for name in state.netns:
        net.Namespace(name, "").remove()
    net.remove_bridge()
    shutil.rmtree(Path("/etc/netns") / CLIENT_NETNS, ignore_errors=True)
    for relay in state.relays:
        shutil.rmtree(LAB / relay.name, ignore_errors=True)
        for suffix in (".zone", ".ini", ".deploy.log", ".console.log"):
            (LAB / f"{relay.name}{suffix}").unlink(missing_ok=True)
    for name in ("known_hosts", "push-tokens.log", "state.json"):
        (LAB / name).unlink(missing_ok=True)
    shutil.rmtree(LAB / "dns", ignore_errors=True)
    say("down (the base image stays cached)")
