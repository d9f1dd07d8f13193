"""The lab's network: one bridge on this machine, one network namespace per lab host.

The subnet exists only inside namespaces the lab makes and on its bridge; nothing routes or
NATs it anywhere. Lab hosts reach the package registries only through the lab's proxy on
the bridge address.
"""

from __future__ import annotations

import ipaddress
import subprocess
from dataclasses import dataclass
from pathlib import Path

BRIDGE = "cmlab0"
SUBNET = ipaddress.IPv4Network("10.231.0.0/24")
GATEWAY = "10.231.0.1"  # the bridge: proxy, DNS, ACME CA and push fake listen here
CLIENT_IP = "10.231.0.100"
PREFIX = SUBNET.prefixlen


class NetError(Exception):
    pass


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if check and result.returncode != 0:
        raise NetError(f"ip {' '.join(args)}: {result.stderr.strip()}")
    return result


def link_exists(name: str) -> bool:
    return ip("link", "show", name, check=False).returncode == 0


def netns_exists(name: str) -> bool:
    return Path("/run/netns", name).exists()


def ensure_bridge() -> None:
    if not link_exists(BRIDGE):
        ip("link", "add", BRIDGE, "type", "bridge")
    if GATEWAY not in ip("-4", "addr", "show", BRIDGE).stdout:
        ip("addr", "add", f"{GATEWAY}/{PREFIX}", "dev", BRIDGE)
    ip("link", "set", BRIDGE, "up")


@dataclass(frozen=True)
class Namespace:
    name: str
    address: str

    @property
    def host_link(self) -> str:
        # interface names have at most 15 characters: "cmlab-relay12" -> "cm-relay12-h"
        return f"cm-{self.name.removeprefix('cmlab-')[:9]}-h"

    def ensure(self) -> None:
        """The namespace with its veth end, address and loopback (idempotent).

        No default route: a lab host reaches its own subnet and nothing else, so no packet of
        the lab can leave this machine even where it forwards IP."""
        if not netns_exists(self.name):
            ip("netns", "add", self.name)
        inside = ["netns", "exec", self.name, "ip"]
        if not link_exists(self.host_link):
            ip(
                "link",
                "add",
                self.host_link,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                self.name,
            )
        ip("link", "set", self.host_link, "master", BRIDGE, "up")
        if self.address not in ip(*inside, "-4", "addr", "show", "eth0").stdout:
            ip(*inside, "addr", "add", f"{self.address}/{PREFIX}", "dev", "eth0")
        ip(*inside, "link", "set", "eth0", "up")
        ip(*inside, "link", "set", "lo", "up")

    def remove(self) -> None:
        if link_exists(self.host_link):
            ip("link", "del", self.host_link, check=False)
        if netns_exists(self.name):
            ip("netns", "del", self.name, check=False)


def remove_bridge() -> None:
    if link_exists(BRIDGE):
        ip("link", "del", BRIDGE, check=False)
