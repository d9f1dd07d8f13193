"""Checks before `cmdeploy run` touches a host (DNS pre-check and port check).

One SSH command reads the host's OS release, its addresses and its listening TCP sockets. The
deploy goes ahead only on Debian 12 or 13 (`cmdeploy.release`), and only if every port the
relay needs is free or held by the daemon that will serve it (a second run finds its own
daemons there).

The DNS pre-check (skipped for IPv4 relays, and with `--skip-dns-check`) asks the operator's
resolver: the mail domain needs an A or AAAA record pointing at the host, and an ACME relay
needs `www.<d>` and `mta-sts.<d>` as CNAMEs of `<d>`, since its certificate names all three.
A host behind NAT has its public address elsewhere than on its interfaces: it gets no
"pointing elsewhere" complaint only with `--skip-dns-check`.

Each problem is one clear paragraph; nothing is changed on the host.
"""

from __future__ import annotations

import ipaddress
import re
import shlex
import subprocess
from collections.abc import Callable

from chatmaild.config import Config

from .release import describe, parse_os_release, release_of, supported_text
from .remote import command

# port -> the process names that may hold it (those the deploy itself starts)
EXPECTED_OWNERS: dict[int, frozenset[str]] = {
    # Postfix's master hands the listening socket to its smtpd children
    **dict.fromkeys((25, 465, 587, 10025, 10026, 10027), frozenset({"master", "smtpd"})),
    **dict.fromkeys((143, 993), frozenset({"dovecot", "imap-login"})),
    **dict.fromkeys((80, 443, 8443, 8465, 8993), frozenset({"nginx"})),
    53: frozenset({"unbound"}),
    3478: frozenset({"turnserver"}),
    **dict.fromkeys((10081, 10082, 10083), frozenset({"filtermail", "python3"})),
}

# Ports the relay's daemons bind on loopback only: a socket elsewhere does not collide.
LOOPBACK_ONLY = frozenset({53, 8443, 8465, 8993, 10025, 10026, 10027, 10081, 10082, 10083})

PROBE = (
    "cat /etc/os-release; echo '--- addresses'; ip -o addr show scope global;"
    " echo '--- sockets'; ss -Hltnp"
)
DNS_TIMEOUT = 10.0  # seconds for each name the pre-check asks about

# (name, record type) -> the values found ([] when there are none); raises LookupError
# with a reason when the resolver cannot answer
Lookup = Callable[[str, str], list[str]]


class PreflightError(Exception):
    """The host is not fit for the deploy; the message says why and what to do."""


def parse_listeners(text: str) -> list[tuple[str, int, set[str]]]:
    """`ss -Hltnp` lines -> (address, port, names of the processes listening)."""
    listeners = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 4:
            continue
        address, _, port_text = fields[3].rpartition(":")
        if not port_text.isdigit():
            continue
        names = set(re.findall(r'\("([^"]+)"', line)) or {"unknown"}
        listeners.append((address.strip("[]").split("%")[0], int(port_text), names))
    return listeners


def parse_addresses(text: str) -> list[str]:
    """`ip -o addr show scope global` lines -> the host's addresses."""
    found = []
    for line in text.splitlines():
        fields = line.split()
        for keyword in ("inet", "inet6"):
            if keyword in fields[:-1]:
                found.append(fields[fields.index(keyword) + 1].split("/")[0])
    return found


def dns_problems(config: Config, lookup: Lookup, host: str, host_addresses: list[str]) -> list[str]:
    domain = config.mail_domain
    skip = "(`cmdeploy run --skip-dns-check` deploys without this check.)"
    try:
        addresses = lookup(domain, "A") + lookup(domain, "AAAA")
    except LookupError as e:
        return [f"cannot look up {domain}: {e}. Check this machine's DNS resolver. {skip}"]
    if not addresses:
        return [
            f"{domain} has no A or AAAA record yet. Create `{domain}. A <the server's IPv4 "
            f"address>` (and AAAA for IPv6), wait until it resolves here, then run "
            f"`cmdeploy run` again. {skip}"
        ]
    found = []
    if host_addresses and not set(map(_normal, addresses)) & set(map(_normal, host_addresses)):
        found.append(
            f"{domain} points at {', '.join(addresses)}, but {host} has the addresses "
            f"{', '.join(host_addresses)}: DNS does not point at this host (yet). Fix the A/AAAA "
            "records and run `cmdeploy run` again. A host behind NAT does not see its public "
            f"address: {skip}"
        )
    if config.tls_mode == "acme":
        for name in (f"www.{domain}", f"mta-sts.{domain}"):
            try:
                targets = [t.rstrip(".").lower() for t in lookup(name, "CNAME")]
            except LookupError as e:
                found.append(f"cannot look up {name}: {e}. {skip}")
                continue
            if domain.lower() not in targets:
                found.append(
                    f"{name} is not a CNAME of {domain}: the relay's certificate names it too. "
                    f"Create `{name}. CNAME {domain}.`, then run `cmdeploy run` again. {skip}"
                )
    return found


def _normal(address: str) -> str:
    try:
        return str(ipaddress.ip_address(address))
    except ValueError:
        return address


def resolver_lookup(timeout: float = DNS_TIMEOUT) -> Lookup:
    """Lookups through this machine's resolver (dnspython), as the operator's tools see DNS."""
    import dns.exception
    import dns.resolver

    resolver = dns.resolver.Resolver()
    resolver.lifetime = timeout

    def lookup(name: str, rdtype: str) -> list[str]:
        try:
            answer = resolver.resolve(name, rdtype)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return []
        except dns.exception.Timeout:
            raise LookupError(f"no answer within {timeout:g} s") from None
        except dns.exception.DNSException as e:
            raise LookupError(str(e).rstrip(".")) from None
        return [rd.to_text() for rd in answer]

    return lookup


def collides(port: int, address: str) -> bool:
    """Whether a socket on `address` takes `port` from the relay's own listener."""
    if port in LOOPBACK_ONLY:  # the relay binds these on 127.0.0.1 only
        return address in ("127.0.0.1", "0.0.0.0", "*", "::", "::1")  # noqa: S104
    return True


def problems(
    os_release: dict[str, str], listeners: list[tuple[str, int, set[str]]], host: str
) -> list[str]:
    found = []
    if release_of(os_release) is None:
        name = os_release.get("PRETTY_NAME", "an unknown system")
        found.append(
            f"{host} runs {name}, but a chatmail relay is deployed onto {supported_text()} "
            "only. Install one of them on the server, then run `cmdeploy run` again."
        )
    for address, port, owners in sorted(listeners, key=lambda item: item[1]):
        allowed = EXPECTED_OWNERS.get(port)
        if allowed is not None and not owners <= allowed and collides(port, address):
            found.append(
                f"port {port} on {host} is held by {', '.join(sorted(owners))}, but the relay "
                f"needs it for {', '.join(sorted(allowed))}. Stop and disable that service "
                "(or move it to another port), then run `cmdeploy run` again."
            )
    return found


def probe(config: Config) -> str:
    """PROBE, plus for an external certificate the list of its files that are not readable."""
    if config.tls_mode != "external":
        return PROBE
    paths = " ".join(shlex.quote(p) for p in config.tls_external_cert_and_key.split())
    return f'{PROBE}; echo \'--- unreadable\'; for f in {paths}; do test -r "$f" || echo "$f"; done'


def check_target(
    host: str, config: Config, lookup: Lookup | None = None, timeout: float = 60
) -> str:
    """The host's Debian release ("Debian 13 (trixie)"), for the run's output; raises
    PreflightError with every problem found. `lookup=None` skips the DNS check."""
    try:
        result = subprocess.run(
            command(host, probe(config)),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise PreflightError(f"{host} did not answer over SSH within {timeout:g} s.") from None
    if result.returncode != 0 or "--- sockets" not in result.stdout:
        detail = (result.stderr.strip().splitlines() or ["no answer"])[-1].rstrip(".")
        raise PreflightError(
            f"cannot reach {host} over SSH as root: {detail}. Check that `ssh root@{host}` "
            "logs in with a key and without a password prompt, then run `cmdeploy run` again."
        )
    release, _, rest = result.stdout.partition("--- addresses")
    addresses, _, rest = rest.partition("--- sockets")
    sockets, _, unreadable = rest.partition("--- unreadable")
    os_release = parse_os_release(release)
    found = problems(os_release, parse_listeners(sockets), host)
    for path in unreadable.split():
        found.append(
            f"{path} (tls_external_cert_and_key) does not exist on {host} or is not readable. "
            "Put the certificate and key there, or change the setting, then run `cmdeploy run` "
            "again."
        )
    if lookup is not None and not config.is_ipv4:
        # @local: the addresses are this machine's, which the check compares all the same
        found += dns_problems(config, lookup, host, parse_addresses(addresses))
    if found:
        raise PreflightError("\n\n".join(found))
    codename = release_of(os_release)
    assert codename is not None  # problems() refused any other
    return describe(codename)
