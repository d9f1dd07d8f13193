"""The lab's own services on the bridge address: package proxy, DNS, ACME CA, push fake.

- tinyproxy: the only way lab hosts reach beyond the lab, and only to fetch packages;
- NSD: authoritative for the lab zones (`*.test`), nothing else; relays forward to it;
- pebble, Debian's test ACME CA: it validates HTTP-01 challenges through the lab DNS and
  issues the ACME relays' certificates. Its API speaks HTTPS with a certificate from the lab's
  own CA; the root it issues from is new at each start and fetched from its management port;
- a fake push notification service that records tokens (the real one is never contacted);
- Prometheus (Debian's), scraping the first relay's `/metrics` as an operator's would.
Each runs as a child process whose id the lab records, so `down` stops exactly these.
"""

from __future__ import annotations

import json
import os
import shutil
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from .hosts import PROXY_PORT
from .hosts import start_process as start
from .net import GATEWAY, SUBNET

PUSH_PORT = 8475
PROMETHEUS_PORT = 9090
SCRAPE_INTERVAL = "5s"  # short, so that the online suite sees its counters move soon
ACME_PORT = 14000
ACME_MANAGEMENT_PORT = 15000

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


class ServiceError(Exception):
    pass


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


def wait_for_dns(zone: str, timeout: float = 15) -> None:
    """Until NSD answers for `zone` (it loads its zones a moment after it starts)."""
    import dns.exception
    import dns.message
    import dns.query
    import dns.rcode

    query = dns.message.make_query(f"{zone}.", "SOA")
    deadline = time.monotonic() + timeout
    while True:
        try:
            answer = dns.query.udp(query, GATEWAY, timeout=1)
            if answer.rcode() == dns.rcode.NOERROR and answer.answer:
                return
        except (dns.exception.DNSException, OSError):
            pass
        if time.monotonic() > deadline:
            raise ServiceError(f"the lab DNS does not answer for {zone}; see its nsd.log")
        time.sleep(0.2)


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


def write_prometheus_config(lab: Path, domain: str, ip: str, ca_bundle: Path) -> Path:
    """A scrape job for the relay at `domain`, reached at its address (the lab's names do not
    resolve on the machine itself), its certificate checked against the lab's CAs."""
    conf = lab / "prometheus.yml"
    job = {
        "job_name": "relay",
        "scheme": "https",
        "metrics_path": "/metrics",
        "scrape_interval": SCRAPE_INTERVAL,
        "tls_config": {"ca_file": str(ca_bundle), "server_name": domain},
        "static_configs": [{"targets": [f"{ip}:443"], "labels": {"relay": domain}}],
    }
    # JSON is YAML: no YAML library needed
    conf.write_text(json.dumps({"scrape_configs": [job]}, indent=2) + "\n")
    return conf


def start_prometheus(lab: Path, conf: Path) -> int:
    data = lab / "prometheus-data"
    shutil.rmtree(data, ignore_errors=True)  # every lab starts counting afresh
    argv = [
        "prometheus",
        f"--config.file={conf}",
        f"--storage.tsdb.path={data}",
        "--storage.tsdb.retention.time=1d",
        f"--web.listen-address={GATEWAY}:{PROMETHEUS_PORT}",
    ]
    return start(argv, lab / "prometheus.log")


def prometheus_url() -> str:
    return f"http://{GATEWAY}:{PROMETHEUS_PORT}"


def acme_url() -> str:
    return f"https://{GATEWAY}:{ACME_PORT}/dir"


def openssl(*args: str) -> None:
    result = subprocess.run(["openssl", *args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise ServiceError(f"openssl {args[0]} failed: {result.stderr.strip()[-300:]}")


def ensure_lab_ca(lab: Path, address: str = GATEWAY) -> tuple[Path, Path]:
    """The lab CA and, signed by it, the certificate of pebble's API on `address` (made
    once, kept)."""
    ca, ca_key = lab / "lab-ca.pem", lab / "lab-ca.key"
    cert, key = lab / "pebble-api.pem", lab / "pebble-api.key"
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    if not (ca.exists() and ca_key.exists()):
        openssl(
            "req", "-x509", *ec, "-days", "3650", "-subj", "/CN=chatmail lab CA",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign",
            "-keyout", str(ca_key), "-out", str(ca),
        )  # fmt: skip
        cert.unlink(missing_ok=True)
    if not (cert.exists() and key.exists()):
        with tempfile.TemporaryDirectory() as tmp:
            csr, ext = Path(tmp) / "api.csr", Path(tmp) / "api.ext"
            ext.write_text(f"subjectAltName=IP:{address}\nextendedKeyUsage=serverAuth\n")
            openssl("req", *ec, "-subj", "/CN=chatmail lab ACME", "-keyout", str(key),
                    "-out", str(csr))  # fmt: skip
            openssl(
                "x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key),
                "-CAcreateserial", "-days", "3650", "-extfile", str(ext), "-out", str(cert),
            )  # fmt: skip
    return cert, key


def start_pebble(lab: Path) -> int:
    cert, key = ensure_lab_ca(lab)
    conf = lab / "pebble.json"
    conf.write_text(
        json.dumps(
            {
                "pebble": {
                    "listenAddress": f"{GATEWAY}:{ACME_PORT}",
                    "managementListenAddress": f"{GATEWAY}:{ACME_MANAGEMENT_PORT}",
                    "certificate": str(cert),
                    "privateKey": str(key),
                    "httpPort": 80,
                    "tlsPort": 443,
                    "ocspResponderURL": "",
                    "externalAccountBindingRequired": False,
                }
            },
            indent=2,
        )
    )
    # no artificial validation delays, and no nonces refused at random (pebble's defaults
    # exercise client retries; here they would only slow every deploy down)
    env = {**os.environ, "PEBBLE_VA_NOSLEEP": "1", "PEBBLE_WFE_NONCEREJECT": "0"}
    argv = ["pebble", "-config", str(conf), "-dnsserver", f"{GATEWAY}:53"]
    return start(argv, lab / "pebble.log", env)


def fetch_acme_root(lab: Path, timeout: float = 30) -> str:
    """The root pebble issues from (PEM), once its management API answers."""
    context = ssl.create_default_context(cafile=str(lab / "lab-ca.pem"))
    url = f"https://{GATEWAY}:{ACME_MANAGEMENT_PORT}/roots/0"
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, context=context, timeout=5) as response:  # noqa: S310 (a fixed https URL)
                return str(response.read().decode())
        except OSError:
            if time.monotonic() > deadline:
                raise ServiceError(
                    f"pebble did not answer at {url}; see {lab}/pebble.log"
                ) from None
            time.sleep(0.3)
