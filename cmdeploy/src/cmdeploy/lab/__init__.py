"""`cmdeploy lab`: a miniature Internet on this machine, with relays deployed for real.

`up` makes, idempotently: a bridge and subnet that only the lab's namespaces use, a package
proxy, an authoritative DNS server for the lab zones, an ACME CA (pebble), a fake push
service, N relay hosts (Debian 12 under systemd-nspawn, each in its own namespace) and a
client namespace whose resolver is the lab DNS and which trusts the lab's CAs. Each relay is
then configured with `cmdeploy init`, deployed with the ordinary `cmdeploy run`, and its zone
(from `cmdeploy dns --zonefile`) is served by the lab DNS. `down` removes everything `up`
recorded, and nothing else; the base image stays cached.

Relays use the reserved `.test` TLD. `relay2` is `_relay2.test`, a self-signed relay; `relay3`
(with `--relays 3`) is an IPv4 relay, named by its address alone (`user@[10.231.0.13]`); the
others (`relay1.test`, ...) get their certificates from the lab's ACME CA. So mail between
relay1 and relay2 crosses both TLS modes, and relay3 has no DNS name at all. Lab hosts trust
the lab's CAs as real servers trust the public ones (`ca_cert` in `status` is that bundle).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

from chatmaild.config import read_config, render_ini

from ..run import DeployError, build_wheels
from . import hosts, net, services

LAB = Path(os.environ.get("CMDEPLOY_LAB_DIR", "/var/lib/chatmail-lab"))
CLIENT_NETNS = "cmlab-client"
CA_BUNDLE = LAB / "ca.pem"  # the lab's CAs: pebble's issuing root and the CA of its API
SELF_SIGNED_RELAY = "relay2"
IPV4_RELAY = "relay3"
LAB_MAX_LOAD = 100
# What a relay's deploy sets in /etc/sysctl.d (cmdeploy.base), for the lab's shared kernel:
# the relays' vmail users are one user to it, so one limit covers all of them.
KERNEL_LIMITS = {"fs.inotify.max_user_instances": 65536, "fs.inotify.max_user_watches": 1048576}
TOOLS = {
    "debootstrap": "debootstrap",
    "systemd-nspawn": "systemd-container",
    "tinyproxy": "tinyproxy",
    "nsd": "nsd",
    "pebble": "pebble",
    "prometheus": "prometheus",
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
    debian: str = "12"  # the release the host runs


@dataclass
class State:
    relays: list[Relay] = field(default_factory=list)
    pids: dict[str, int] = field(default_factory=dict)
    netns: list[str] = field(default_factory=list)
    sysctl: dict[str, str] = field(default_factory=dict)  # values before `up` raised them

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
            sysctl=data.get("sysctl", {}),
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


def raise_kernel_limits(state: State) -> None:
    """The relays' kernel limits, which their own deploy cannot set from inside a container.
    The old values are recorded, and `down` puts them back."""
    for key, wanted in KERNEL_LIMITS.items():
        path = Path("/proc/sys") / key.replace(".", "/")
        current = path.read_text().strip()
        if int(current) >= wanted:
            continue
        state.sysctl.setdefault(key, current)
        path.write_text(f"{wanted}\n")
    state.save()


def restore_kernel_limits(state: State) -> None:
    for key, old in state.sysctl.items():
        with contextlib.suppress(OSError):
            (Path("/proc/sys") / key.replace(".", "/")).write_text(f"{old}\n")


def relay_zones(state: State) -> dict[str, str]:
    """What the lab DNS serves: each relay's deployed zone, or just its address before."""
    serial = int(datetime.now(UTC).timestamp())
    zones = {}
    for relay in state.relays:
        if relay.domain == relay.ip:
            continue  # an IPv4 relay has no DNS name
        deployed = LAB / f"{relay.name}.zone"
        records = deployed.read_text() if deployed.exists() else first_records(relay)
        zones[relay.domain] = services.soa_zone(relay.domain, serial, records)
    return zones


def first_records(relay: Relay) -> str:
    """What an operator creates before the first deploy (`cmdeploy init` says which)."""
    records = f"{relay.domain}. IN A {relay.ip}\n"
    if not relay.domain.startswith("_"):
        for name in ("www", "mta-sts"):
            records += f"{name}.{relay.domain}. IN CNAME {relay.domain}.\n"
    return records


def relay_domain(name: str, ip: str) -> str:
    if name == IPV4_RELAY:
        return ip
    return f"_{name}.test" if name == SELF_SIGNED_RELAY else f"{name}.test"


def ensure_trust() -> bool:
    """The lab's CAs, trusted by the client namespace and (see `trust_on_relay`) the relays;
    True when the bundle changed.

    pebble makes a new root at each start, so the bundle is rewritten whenever it starts."""
    root = services.fetch_acme_root(LAB)
    bundle = root.strip() + "\n" + (LAB / "lab-ca.pem").read_text()
    changed = not CA_BUNDLE.exists() or CA_BUNDLE.read_text() != bundle
    if changed:
        CA_BUNDLE.write_text(bundle)
    # `ip netns exec` mounts /etc/netns/<ns>/ssl over /etc/ssl: Debian's store plus ours
    ssl_dir = Path("/etc/netns") / CLIENT_NETNS / "ssl"
    shutil.rmtree(ssl_dir, ignore_errors=True)
    shutil.copytree("/etc/ssl", ssl_dir, symlinks=True)
    store = ssl_dir / "certs" / "ca-certificates.crt"
    store.unlink(missing_ok=True)
    store.write_text(Path("/etc/ssl/certs/ca-certificates.crt").read_text() + bundle)
    return changed


def trust_on_relay(relay: Relay, key: Path) -> None:
    """Puts the lab's CAs in the relay's system store (certbot reaches pebble's API with it,
    Postfix verifies other ACME relays with it)."""
    anchors = LAB / relay.name / "usr/local/share/ca-certificates"
    anchors.mkdir(parents=True, exist_ok=True)
    pem = CA_BUNDLE.read_text().split("-----END CERTIFICATE-----")
    wanted = {
        f"chatmail-lab-{i}.crt": part.strip() + "\n-----END CERTIFICATE-----\n"
        for i, part in enumerate(pem)
        if part.strip()
    }
    present = {p.name: p.read_text() for p in anchors.glob("chatmail-lab-*.crt")}
    if present == wanted:
        return
    for name in present:
        (anchors / name).unlink()
    for name, text in wanted.items():
        (anchors / name).write_text(text)
    result = hosts.ssh(key, relay.ip, "update-ca-certificates --fresh >/dev/null")
    if result.returncode != 0:
        raise LabError(f"update-ca-certificates failed on {relay.name}: {result.stderr.strip()}")


def restart_dns(state: State) -> None:
    if pid := state.pids.get("dns"):
        hosts.stop_process(pid)
    zones = relay_zones(state)
    conf = services.write_dns(LAB, zones)
    state.pids["dns"] = services.start_dns(LAB, conf)
    state.save()
    for zone in zones:
        services.wait_for_dns(zone)


UNBOUND_CONTROL = "unbound-control -c /etc/unbound/unbound.conf"


def forget_dns_failures(state: State, key: Path) -> None:
    """The relays' resolvers forget what they learnt while the lab DNS restarted: unbound
    takes a server that did not answer for down for minutes (its infra cache) and keeps the
    SERVFAILs it gave meanwhile, so a relay's own checks (its health check's DNS section)
    would fail for a while after every `lab up`. The spare host counts too while it is up: a
    relay moved onto it checks its peers' DKIM keys through its own unbound, and one SERVFAIL
    cached there defers their mail for minutes. A host without unbound yet is left as is."""
    flush = f"{UNBOUND_CONTROL} flush_infra all; {UNBOUND_CONTROL} flush_zone test; true"
    spare = [SPARE_IP] if hosts.alive(state.pids.get(SPARE, 0)) else []
    for ip in [relay.ip for relay in state.relays] + spare:
        hosts.ssh(key, ip, flush)


def releases_of(text: str, relay_count: int) -> list[str]:
    """`--debian`: one release for all relays ("13"), or one per relay in order ("12,13"),
    the last one standing for the relays after it."""
    given = [part.strip() for part in text.split(",") if part.strip()]
    for release in given:
        if release not in hosts.BASE_DIRS:
            known = " or ".join(hosts.BASE_DIRS)
            raise LabError(f"--debian {text}: the lab has Debian {known}, not {release!r}")
    if not given:
        raise LabError("--debian needs a release: 12, 13, or one per relay such as 12,13")
    return [given[min(i, len(given) - 1)] for i in range(relay_count)]


def up(relay_count: int = 2, deploy: bool = True, debian: list[str] | None = None) -> State:
    """Bring the lab up with `relay_count` relays; `debian`: each relay's release (default:
    what an existing relay runs, else 12)."""
    ensure_tools()
    LAB.mkdir(parents=True, exist_ok=True)
    state = State.load()
    raise_kernel_limits(state)
    net.ensure_bridge()
    client = net.Namespace(CLIENT_NETNS, net.CLIENT_IP)
    client.ensure()
    netns_dir = Path("/etc/netns") / CLIENT_NETNS
    netns_dir.mkdir(parents=True, exist_ok=True)
    (netns_dir / "resolv.conf").write_text(f"nameserver {net.GATEWAY}\n")
    if CLIENT_NETNS not in state.netns:
        state.netns.append(CLIENT_NETNS)
    for name, start in (
        ("proxy", services.start_proxy),
        ("push", services.start_push_fake),
        ("acme", services.start_pebble),
    ):
        if not hosts.alive(state.pids.get(name, 0)):
            state.pids[name] = start(LAB)
    state.save()
    if ensure_trust() and state.relays:
        # pebble started again (the machine rebooted under a lab that was up): certificates
        # issued under its old root verify no more, and certbot keeps a valid-looking lineage
        say("the ACME CA has a new root: the relays start again from the base image")
        forget_relays(state)

    key = hosts.ensure_ssh_key(LAB)
    for i in range(1, relay_count + 1):
        name = f"relay{i}"
        relay = next((r for r in state.relays if r.name == name), None)
        wanted = debian[i - 1] if debian else (relay.debian if relay else "12")
        if relay is not None and relay.debian != wanted:
            raise LabError(
                f"{name} runs Debian {relay.debian}, not {wanted}: `cmdeploy lab down` first"
            )
        if relay is None:
            ip = str(net.SUBNET[10 + i])
            relay = Relay(
                name,
                relay_domain(name, ip),
                ip,
                f"cmlab-{name}",
                str(LAB / f"{name}.ini"),
                debian=wanted,
            )
            state.relays.append(relay)
        relay.pid = ensure_host(state, relay, key)
        state.save()
    restart_dns(state)
    for relay in state.relays:
        hosts.wait_ready(key, relay.ip)
        trust_on_relay(relay, key)
    if deploy:
        for relay in state.relays:
            deploy_relay(relay)
        restart_dns(state)
        forget_dns_failures(state, key)
        for relay in state.relays:
            check_dns(relay)
        start_prometheus(state)
    return state


# A host with no relay on it, booted from the base image: where the migration check moves a
# relay to (`cmdeploy migrate --to`), as an operator's freshly rented server.
SPARE = "spare"
SPARE_NETNS = "cmlab-spare"
SPARE_IP = str(net.SUBNET[20])


def ensure_host(state: State, host: Relay, key: Path) -> int:
    """`host` running in its namespace, booted from its release's base image unless it runs
    already (its tree is kept, as a server's disk); its nspawn pid."""
    ns = net.Namespace(host.netns, host.ip)
    ns.ensure()
    if host.netns not in state.netns:
        state.netns.append(host.netns)
    if hosts.alive(host.pid):
        return host.pid
    say(f"base image of Debian {host.debian} (cached after the first time, a minute)")
    base = hosts.ensure_base_image(LAB, LAB / "debootstrap.log", host.debian)
    say(f"booting {host.name} ({host.ip}, Debian {host.debian})")
    hosts.prepare_tree(base, LAB / host.name, host.name, key)
    return hosts.boot(LAB / host.name, ns, host.name, LAB / f"{host.name}.console.log")


def boot_spare(state: State, debian: str = "12") -> str:
    """Boot the spare host on Debian `debian` (from the base image; it is removed after each
    use, `remove_spare`); its address."""
    key = hosts.ensure_ssh_key(LAB)
    spare = Relay(SPARE, "", SPARE_IP, SPARE_NETNS, "", state.pids.get(SPARE, 0), debian)
    state.pids[SPARE] = ensure_host(state, spare, key)
    state.save()
    hosts.wait_ready(key, SPARE_IP)
    trust_on_relay(spare, key)
    return SPARE_IP


def remove_spare(state: State) -> None:
    """Stop the spare host and forget it, tree and host key included."""
    hosts.stop_process(state.pids.pop(SPARE, 0))
    shutil.rmtree(LAB / SPARE, ignore_errors=True)
    (LAB / f"{SPARE}.console.log").unlink(missing_ok=True)
    known = LAB / "known_hosts"
    if known.exists():  # a new tree has new host keys
        subprocess.run(["ssh-keygen", "-q", "-R", SPARE_IP, "-f", str(known)], check=False)
    state.save()


def serve_zone(state: State, relay: Relay, zone: str) -> None:
    """The lab DNS answers for `relay` with the records of `zone` from now on (a DNS change
    the operator makes at their provider)."""
    (LAB / f"{relay.name}.zone").write_text(zone)
    restart_dns(state)
    forget_dns_failures(state, hosts.ensure_ssh_key(LAB))


def start_prometheus(state: State) -> None:
    """(Re)start the lab's Prometheus on the first relay: its CA bundle may be new."""
    relay = state.relays[0]
    hosts.stop_process(state.pids.pop("prometheus", 0), timeout=10)
    conf = services.write_prometheus_config(LAB, relay.domain, relay.ip, CA_BUNDLE)
    state.pids["prometheus"] = services.start_prometheus(LAB, conf)
    state.save()


def cmdeploy_in_client(args: list[str], relay: Relay, out: IO[bytes]) -> int:
    """`cmdeploy ARGS --config <relay's ini>` from the operator's seat, the client namespace."""
    env = {**os.environ, **ssh_env(), "CMDEPLOY_WHEELS": str(LAB / "wheels")}
    argv = ["ip", "netns", "exec", CLIENT_NETNS, sys.executable, "-m", "cmdeploy.cli"]
    result = subprocess.run(
        [*argv, *args, "--config", relay.config],
        env=env,
        stdout=out,
        stderr=subprocess.STDOUT,
        check=False,
    )
    return result.returncode


def check_dns(relay: Relay) -> None:
    """`cmdeploy dns` passes for the relay, now that the lab DNS serves its zone."""
    if relay.domain == relay.ip:
        return  # an IPv4 relay has no DNS records
    say(f"checking the DNS records of {relay.domain}")
    log = LAB / f"{relay.name}.deploy.log"
    with open(log, "ab") as out:
        if cmdeploy_in_client(["dns", "--ssh-host", relay.ip], relay, out) != 0:
            raise LabError(f"`cmdeploy dns` finds records missing for {relay.domain}; see {log}")


def deploy_relay(relay: Relay) -> None:
    """`cmdeploy init`, `run` and `dns --zonefile` for one lab relay, exactly as an operator."""
    ini = Path(relay.config)
    if not ini.exists():
        overrides = {
            "dns_forwarders": net.GATEWAY,
            "push_endpoint": services.push_url(),
            # Lab hosts share this machine's kernel and so its load average: the whole lab's
            # load (a benchmark, the other relays) would stop account creation on every relay.
            "max_load_1m": str(LAB_MAX_LOAD),
        }
        if not relay.domain.startswith("_") and relay.domain != relay.ip:
            overrides["acme_directory_url"] = services.acme_url()
        ini.write_text(render_ini(relay.domain, overrides))
    read_config(ini)  # a broken ini stops here with its own clear message
    # The operator's machine is the client namespace: its resolver is the lab DNS (which the
    # DNS pre-check asks). It has no package index, so the wheels are built out here.
    wheels = LAB / "wheels"
    shutil.rmtree(wheels, ignore_errors=True)
    try:
        build_wheels(wheels)
    except DeployError as e:
        raise LabError(str(e)) from None
    steps = [(["run", "--ssh-host", relay.ip], "deploying")]
    if relay.domain != relay.ip:  # an IPv4 relay has no zone
        zone = str(LAB / f"{relay.name}.zone")
        steps.append((["dns", "--ssh-host", relay.ip, "--zonefile", zone], "writing the zone of"))
    for args, what in steps:
        say(f"{what} {relay.domain}")
        log = LAB / f"{relay.name}.deploy.log"
        with open(log, "ab") as out:
            if cmdeploy_in_client(args, relay, out) != 0:
                raise LabError(f"{what} {relay.domain} failed; see {log}")


def status(state: State) -> dict[str, object]:
    """The shape other tools rely on (issue: lab status --json)."""
    return {
        "relays": [
            {
                "domain": r.domain,
                "ip": r.ip,
                "ssh": f"root@{r.ip}",
                "config": r.config,
                "debian": r.debian,
            }
            for r in state.relays
        ],
        "dns": net.GATEWAY,
        "client_netns": CLIENT_NETNS,
        "ca_cert": str(CA_BUNDLE),
        "push_fake": services.push_url(),
        "prometheus": services.prometheus_url() if "prometheus" in state.pids else None,
        "ssh_key": str(LAB / "id_ed25519"),
        "push_tokens": str(LAB / "push-tokens.log"),
    }


def forget_relays(state: State) -> None:
    """Stops the relays and removes everything of theirs: trees, configs, zones, host keys."""
    for relay in state.relays:
        if relay.pid:
            say(f"stopping {relay.name}")
            hosts.stop_process(relay.pid)
        shutil.rmtree(LAB / relay.name, ignore_errors=True)
        for suffix in (".zone", ".ini", ".deploy.log", ".console.log"):
            (LAB / f"{relay.name}{suffix}").unlink(missing_ok=True)
    state.relays = []
    (LAB / "known_hosts").unlink(missing_ok=True)
    state.save()


def down() -> None:
    state = State.load()
    forget_relays(state)
    remove_spare(state)
    for pid in state.pids.values():
        hosts.stop_process(pid, timeout=10)
    for name in state.netns:
        net.Namespace(name, "").remove()
    net.remove_bridge()
    restore_kernel_limits(state)
    shutil.rmtree(Path("/etc/netns") / CLIENT_NETNS, ignore_errors=True)
    lab_files = ("known_hosts", "push-tokens.log", "state.json", CA_BUNDLE.name)
    ca_files = ("lab-ca.pem", "lab-ca.key", "lab-ca.srl", "pebble-api.pem", "pebble-api.key")
    for name in (*lab_files, *ca_files, "pebble.json", "prometheus.yml"):
        (LAB / name).unlink(missing_ok=True)
    shutil.rmtree(LAB / "dns", ignore_errors=True)
    shutil.rmtree(LAB / "prometheus-data", ignore_errors=True)
    shutil.rmtree(LAB / "wheels", ignore_errors=True)
    say("down (the base image stays cached)")
