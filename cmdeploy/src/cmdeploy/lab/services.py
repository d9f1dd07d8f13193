"""The lab's own services on the bridge address: package proxy, DNS, push fake.

- tinyproxy: the only way lab hosts reach beyond the lab, and only to fetch packages;
- NSD: authoritative for the lab zones (`*.test`), nothing else; relays forward to it;
- a fake push notification service that records tokens (the real one is never contacted).
Each runs as a child process whose id the lab records, so `down` stops exactly these.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from .hosts import PROXY_PORT
from .net import GATEWAY, SUBNET

PUSH_PORT = 8475

# The only hosts lab hosts may reach through the proxy: Debian's package mirrors.
ALLOWED_HOSTS = ("deb.debian.org", "security.debian.org")

TINYPROXY_CONF = f"""\
# chatmail lab package proxy: lab hosts fetch Debian packages through it, nothing else
Port {PROXY_PORT}
Listen {GATEWAY}
Timeout 600
Allow {SUBNET}
ConnectPort 443
MaxClients 100
LogLevel Error
Filter "{{filter}}"
FilterType fnmatch
FilterDefaultDeny Yes
"""

NSD_CONF = """\
server:
    ip-address: {gateway}
    port: 53
    username: ""
    database: ""
    zonelistfile: "{dir}/zone.list"
    xfrdfile: "{dir}/xfrd.state"
    pidfile: "{dir}/nsd.pid"
    zonesdir: "{dir}"
    verbosity: 0
    hide-version: yes
remote-control:
    control-enable: no
{zones}"""


def start(argv: list[str], log: Path) -> int:
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    return proc.pid


def start_proxy(lab: Path) -> int:
    allowed = lab / "tinyproxy.allow"
    allowed.write_text("".join(f"{host}\n" for host in ALLOWED_HOSTS))
    conf = lab / "tinyproxy.conf"
    conf.write_text(TINYPROXY_CONF.format(filter=allowed))
    return start(["tinyproxy", "-d", "-c", str(conf)], lab / "tinyproxy.log")


def soa_zone(domain: str, serial: int, records: str) -> str:
    return (
        f"$TTL 60\n"
        f"{domain}. IN SOA ns.{domain}. hostmaster.{domain}. {serial} 60 60 3600 60\n"
        f"{domain}. IN NS ns.{domain}.\n"
        f"ns.{domain}. IN A {GATEWAY}\n"
        f"{records}"
    )


def write_dns(lab: Path, zones: dict[str, str]) -> Path:
    """The NSD config serving `zones` ({domain: zone file text}); returns the config path."""
    dns_dir = lab / "dns"
    dns_dir.mkdir(exist_ok=True)
    entries = []
    for domain, text in zones.items():
        (dns_dir / f"{domain}.zone").write_text(text)
        entries.append(f'zone:\n    name: "{domain}"\n    zonefile: "{domain}.zone"\n')
    conf = dns_dir / "nsd.conf"
    conf.write_text(NSD_CONF.format(gateway=GATEWAY, dir=dns_dir, zones="".join(entries)))
    return conf


def start_dns(lab: Path, conf: Path) -> int:
    return start(["nsd", "-d", "-c", str(conf)], lab / "nsd.log")


def start_push_fake(lab: Path) -> int:
    argv = [
        sys.executable,
        "-m",
        "cmdeploy.lab.pushfake",
        GATEWAY,
        str(PUSH_PORT),
        str(lab / "push-tokens.log"),
    ]
    return start(argv, lab / "pushfake.log")


def push_url() -> str:
    return f"http://{GATEWAY}:{PUSH_PORT}/notify"
