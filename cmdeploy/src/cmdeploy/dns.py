"""The relay's DNS records: generate them, write a zone file, check them.

`cmdeploy dns` (doc/contract.md §7) builds the records from the config and `RelayFacts` (the
addresses, DKIM key, ACME account and MTA-STS id found on the relay), then either writes them
as a BIND zone file or checks each one against the zone's authoritative nameservers, queried
directly so that no cache hides a fresh change. Generation is pure; every network access goes
through the resolver and nameserver addressing passed in, and every wait is bounded by
`timeout`.

An IPv4 relay has no DNS name, so it has no records at all.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Protocol, TextIO

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.resolver

from chatmaild import dnsmatch
from chatmaild.config import Config
from cmdeploy.layout import Layout
from cmdeploy.remote import RelayState

TTL = 3600
TXT_STRING_MAX = 255  # one <character-string> of a TXT record (RFC 1035 §3.3)
DEFAULT_TIMEOUT = 3.0  # seconds for each network wait


# --- generation (pure) --------------------------------------------------------------------


@dataclass(frozen=True)
class RelayFacts:
    """What the records depend on besides the config, found on the relay (doc/contract.md §7.1)."""

    ipv4: str | None
    ipv6: str | None
    dkim_public_key_b64: str | None  # base64 DER of `openssl rsa -pubout`, no PEM armour
    acme_account_uri: str | None
    sts_id: str | None  # the id of an existing `_mta-sts` record, kept so caches stay valid


@dataclass(frozen=True)
class Record:
    name: str  # absolute, with the final dot
    type: str
    value: str  # zone-file presentation form
    required: bool
    ttl: int = TTL

    def line(self) -> str:
        return f"{self.name} {self.ttl} IN {self.type} {self.value}"


def facts_from_state(state: RelayState) -> RelayFacts:
    return RelayFacts(
        ipv4=state.ipv4[0] if state.ipv4 else None,
        ipv6=state.ipv6[0] if state.ipv6 else None,
        dkim_public_key_b64=dkim_key_from_pem(state.dkim_public_pem) or None,
        acme_account_uri=state.acme_account_uri,
        sts_id=None,
    )


def dkim_key_from_pem(pem: str) -> str:
    """The one-line base64 of a PEM public key (`openssl rsa -pubout` output)."""
    return "".join(line.strip() for line in pem.splitlines() if line and "-----" not in line)


def quote_txt(text: str) -> str:
    """`text` as TXT strings of at most 255 characters each, quoted for a zone file."""
    chunks = [text[i : i + TXT_STRING_MAX] for i in range(0, len(text), TXT_STRING_MAX)] or [""]
    return " ".join('"' + c.replace("\\", "\\\\").replace('"', '\\"') + '"' for c in chunks)


def txt_text(value: str) -> str:
    """The joined content of a TXT value in presentation form (`"a" "b"` -> `ab`)."""
    rd = dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.TXT, value)
    strings: tuple[bytes, ...] = getattr(rd, "strings", ())
    return b"".join(strings).decode()


def unsplit_dkim(records: Iterable[Record]) -> str | None:
    """The DKIM TXT content as one string, for DNS web interfaces that split it themselves."""
    for record in records:
        if record.type == "TXT" and "._domainkey." in record.name and "v=DKIM1" in record.value:
            return txt_text(record.value)
    return None


def zone_records(config: Config, facts: RelayFacts, now: datetime) -> list[Record]:
    """Every record of doc/contract.md §7.1 that config and facts can build, required first.

    Records whose data is unknown are left out: A/AAAA without an address, DKIM without the
    key, CAA without the ACME account. An IPv4 relay gets none (it has no DNS name).
    """
    if config.is_ipv4:
        return []
    d = config.mail_domain + "."
    acme = config.tls_mode == "acme"
    req: list[Record] = []
    rec: list[Record] = []
    if facts.ipv4:
        req.append(Record(d, "A", facts.ipv4, True))
    if facts.ipv6 and not config.disable_ipv6:
        req.append(Record(d, "AAAA", facts.ipv6, True))
    req.append(Record(d, "MX", f"10 {d}", True))
    if acme:
        sts_id = facts.sts_id or now.strftime("%Y%m%d%H%M")
        req.append(Record(f"_mta-sts.{d}", "TXT", quote_txt(f"v=STSv1; id={sts_id}"), True))
        req.append(Record(f"mta-sts.{d}", "CNAME", d, True))
    req.append(Record(f"www.{d}", "CNAME", d, True))
    if facts.dkim_public_key_b64:
        key = "".join(facts.dkim_public_key_b64.split())
        dkim = f"v=DKIM1;k=rsa;p={key};s=email;t=s"
        selector = Layout(config).dkim_selector
        req.append(Record(f"{selector}._domainkey.{d}", "TXT", quote_txt(dkim), True))

    rec.append(Record(d, "TXT", quote_txt("v=spf1 a ~all"), False))
    rec.append(Record(f"_dmarc.{d}", "TXT", quote_txt("v=DMARC1;p=reject;adkim=s;aspf=s"), False))
    if acme and facts.acme_account_uri:
        caa = quote_txt(f"letsencrypt.org;accounturi={facts.acme_account_uri}")
        rec.append(Record(d, "CAA", f"0 issue {caa}", False))
    rec.append(Record(f"_adsp._domainkey.{d}", "TXT", quote_txt("dkim=discardable"), False))
    for service, port in (("submission", 587), ("submissions", 465), ("imap", 143), ("imaps", 993)):
        rec.append(Record(f"_{service}._tcp.{d}", "SRV", f"0 1 {port} {d}", False))
    return req + rec


def zonefile(records: Sequence[Record]) -> str:
    """The records in BIND zone-file syntax: a header comment, required records first."""
    if not records:
        return "; No DNS records: an IPv4 relay has no DNS name.\n"
    domain = min((r.name for r in records), key=len).rstrip(".")
    width = max(len(r.name) for r in records)
    lines = [
        f"; DNS records of the chatmail relay {domain} (generated by `cmdeploy dns`).",
        "; Add them to the zone; names are absolute, so $ORIGIN does not matter.",
    ]
    for required, title in ((True, "required"), (False, "recommended")):
        group = [r for r in records if r.required == required]
        if not group:
            continue
        lines += ["", f"; {title}"]
        for r in group:
            lines.append(f"{r.name:<{width}} {r.ttl} IN {r.type:<5} {r.value}")
    dkim = unsplit_dkim(records)
    if dkim is not None:
        lines += ["", "; The DKIM TXT value as one string, for web interfaces that split it:"]
        lines.append(f"; {dkim}")
    return "\n".join(lines) + "\n"


# --- checking against the authoritative nameservers ---------------------------------------


class Resolver(Protocol):
    """What the check needs from a resolver; `dns.resolver.Resolver` is one."""

    def resolve(
        self,
        qname: dns.name.Name | str,
        rdtype: dns.rdatatype.RdataType | str,
        *,
        raise_on_no_answer: bool = ...,
        lifetime: float | None = ...,
    ) -> dns.resolver.Answer: ...


@dataclass(frozen=True)
class Problem:
    record: Record  # the record as it should be created
    kind: str  # "missing" or "wrong"
    reason: str  # why, with what was found where


@dataclass(frozen=True)
class CheckResult:
    checked: list[Record]
    problems: list[Problem] = field(default_factory=list)

    @property
    def required_problems(self) -> int:
        """How many required records are missing or wrong."""
        return sum(p.record.required for p in self.problems)

    @property
    def ok(self) -> bool:
        """True when every required record is in place (recommended ones may lack)."""
        return self.required_problems == 0


class _Unreachable(Exception):
    """No nameserver gave a usable answer; the text says which and why."""


class _Checker:
    def __init__(
        self,
        resolver: Resolver,
        nameservers: Sequence[str] | None,
        port: int,
        timeout: float,
    ) -> None:
        self.resolver = resolver
        self.nameservers = list(nameservers) if nameservers is not None else None
        self.port = port
        self.timeout = timeout
        self.zones: dict[dns.name.Name, dns.name.Name] = {}
        self.servers: dict[dns.name.Name, list[str]] = {}
        self.dead: dict[str, str] = {}  # server -> why it is skipped from now on
        self.resolver_failure: str | None = None

    # -- finding the authoritative servers of a name

    def _resolve(self, qname: dns.name.Name, rdtype: str) -> dns.message.Message | None:
        """The resolver's response, NXDOMAIN included; a timeout ends every later lookup."""
        if self.resolver_failure:
            raise _Unreachable(self.resolver_failure)
        try:
            answer = self.resolver.resolve(
                qname, rdtype, raise_on_no_answer=False, lifetime=self.timeout
            )
            return answer.response
        except dns.resolver.NXDOMAIN as e:
            responses: dict[dns.name.Name, dns.message.Message] = e.kwargs.get("responses", {})
            return responses.get(qname)
        except dns.exception.Timeout:
            self.resolver_failure = f"the DNS resolver did not answer within {self.timeout:g}s"
            raise _Unreachable(self.resolver_failure) from None
        except dns.exception.DNSException as e:  # NoNameservers (SERVFAIL, REFUSED), ...
            raise _Unreachable(f"the DNS resolver failed for {qname} {rdtype}: {e}") from None

    def _zone_of(self, name: dns.name.Name) -> dns.name.Name:
        """The apex of the zone holding `name`: walk up until a SOA names it."""
        walked = []
        current = name
        while True:
            if current in self.zones:
                zone = self.zones[current]
                break
            walked.append(current)
            response = self._resolve(current, "SOA")
            found = None
            for rrset in response.answer if response else []:
                if rrset.rdtype == dns.rdatatype.SOA and rrset.name == current:
                    found = current
            for rrset in response.authority if response and not found else []:
                if rrset.rdtype == dns.rdatatype.SOA and current.is_subdomain(rrset.name):
                    found = rrset.name
            if found is not None:
                zone = found
                break
            if current == dns.name.root:
                raise _Unreachable(f"no zone (SOA) found for {name}")
            current = current.parent()
        for n in walked:
            self.zones[n] = zone
        return zone

    def _servers_for(self, name: dns.name.Name) -> list[str]:
        if self.nameservers is not None:
            return self.nameservers
        zone = self._zone_of(name)
        if zone not in self.servers:
            response = self._resolve(zone, "NS")
            targets = sorted(
                {
                    rd.target
                    for rrset in (response.answer if response else [])
                    if rrset.rdtype == dns.rdatatype.NS
                    for rd in rrset
                }
            )
            addresses: list[str] = []
            for rdtype in ("A", "AAAA"):  # IPv4 first: not every host routes IPv6
                for target in targets:
                    response = self._resolve(target, rdtype)
                    for rrset in response.answer if response else []:
                        if rrset.rdtype == dns.rdatatype.from_text(rdtype):
                            addresses.extend(rd.to_text() for rd in rrset)
            if not addresses:
                raise _Unreachable(f"no nameserver address found for the zone {zone}")
            self.servers[zone] = addresses
        return self.servers[zone]

    # -- asking them

    def query(self, name: str, rdtype: str) -> tuple[list[dns.rdata.Rdata], str, bool]:
        """The authoritative answer's values, the server that gave it, and if the name
        does not exist (NXDOMAIN)."""
        qname = dns.name.from_text(name)
        servers = self._servers_for(qname)
        failures = []
        for server in servers:
            if server in self.dead:
                failures.append(f"{server}: {self.dead[server]}")
                continue
            request = dns.message.make_query(qname, rdtype)
            request.flags &= ~dns.flags.RD  # ask the authority itself, not its cache
            try:
                response, _ = dns.query.udp_with_fallback(
                    request, server, timeout=self.timeout, port=self.port
                )
            except dns.exception.Timeout:
                self.dead[server] = f"no answer within {self.timeout:g}s"
                failures.append(f"{server}: {self.dead[server]}")
                continue
            except (OSError, dns.exception.DNSException) as e:
                self.dead[server] = f"unreachable ({e})"
                failures.append(f"{server}: {self.dead[server]}")
                continue
            rcode = response.rcode()
            if rcode == dns.rcode.NXDOMAIN:
                return [], server, True
            if rcode != dns.rcode.NOERROR:
                failures.append(f"{server}: {dns.rcode.to_text(rcode)}")
                continue
            if not response.flags & dns.flags.AA:
                failures.append(f"{server}: not authoritative for {name}")
                continue
            values = [
                rd
                for rrset in response.answer
                if rrset.rdtype == dns.rdatatype.from_text(rdtype)
                for rd in rrset
            ]
            return values, server, False
        raise _Unreachable("; ".join(failures) or "no nameserver to ask")

    def check(self, record: Record) -> Problem | None:
        try:
            values, server, nxdomain = self.query(record.name, record.type)
        except _Unreachable as e:
            return Problem(record, "missing", f"could not be looked up: {e}")
        verdict = dnsmatch.compare(record.type, record.value, values)
        if verdict is None:
            return None
        kind, shown = verdict
        if kind == dnsmatch.WRONG:
            return Problem(record, kind, f"{server} has {shown}")
        matching = "" if record.type in dnsmatch.SINGLE_VALUED else "matching "
        absent = (
            f"no such name (NXDOMAIN) at {server}"
            if nxdomain
            else f"no {matching}{record.type} record at {server}"
        )
        return Problem(record, kind, absent)


def check(
    records: Sequence[Record],
    resolver: Resolver,
    *,
    nameservers: Sequence[str] | None = None,
    port: int = 53,
    timeout: float = DEFAULT_TIMEOUT,
) -> CheckResult:
    """Compare each record with what its zone's authoritative nameservers serve.

    `resolver` finds the zone (SOA) and its nameservers (NS, then A/AAAA); those are then
    asked directly on `port`. `nameservers` skips the discovery and asks those addresses.
    A server that times out once is not asked again, so the whole check stays bounded.
    """
    checker = _Checker(resolver, nameservers, port, timeout)
    problems = [p for p in map(checker.check, records) if p is not None]
    return CheckResult(list(records), problems)


def existing_sts_id(
    mail_domain: str,
    resolver: Resolver,
    *,
    nameservers: Sequence[str] | None = None,
    port: int = 53,
    timeout: float = DEFAULT_TIMEOUT,
) -> str | None:
    """The id of the zone's `_mta-sts` record, if any: it is kept (doc/contract.md §7.1)."""
    checker = _Checker(resolver, nameservers, port, timeout)
    try:
        values, _, _ = checker.query(f"_mta-sts.{mail_domain}.", "TXT")
    except _Unreachable:
        return None
    for rd in values:
        m = re.match(r"v=STSv1;id=([A-Za-z0-9]{1,32})$", dnsmatch.key(rd))
        if m:
            return m.group(1)
    return None


def report(result: CheckResult) -> str:
    """One line per problem with the record to create; required problems first."""
    if not result.checked:
        return "No DNS records to check: an IPv4 relay has no DNS name.\n"
    problems = sorted(result.problems, key=lambda p: not p.record.required)
    if not problems:
        return f"All {len(result.checked)} DNS records are in place.\n"
    lines = []
    for p in problems:
        level = "required" if p.record.required else "recommended"
        lines.append(f"{p.kind} ({level}): {p.record.line()}  ; {p.reason}")
    dkim = unsplit_dkim(p.record for p in problems)
    if dkim is not None:
        lines.append(f"DKIM value as one string for web interfaces: {dkim}")
    required = result.required_problems
    lines.append(
        f"{required} required and {len(problems) - required} recommended of "
        f"{len(result.checked)} DNS records need attention."
    )
    return "\n".join(lines) + "\n"


def check_relay(
    config: Config,
    facts: RelayFacts,
    resolver: Resolver,
    *,
    now: datetime | None = None,
    nameservers: Sequence[str] | None = None,
    port: int = 53,
    timeout: float = DEFAULT_TIMEOUT,
) -> CheckResult:
    """Every record of the relay's zone against DNS, keeping an MTA-STS id already there."""
    if config.tls_mode == "acme" and facts.sts_id is None:
        sts_id = existing_sts_id(
            config.mail_domain, resolver, nameservers=nameservers, port=port, timeout=timeout
        )
        facts = replace(facts, sts_id=sts_id)
    records = zone_records(config, facts, now or datetime.now(UTC))
    return check(records, resolver, nameservers=nameservers, port=port, timeout=timeout)


def run_dns_check(
    config: Config,
    facts: RelayFacts,
    resolver: Resolver,
    *,
    now: datetime | None = None,
    nameservers: Sequence[str] | None = None,
    port: int = 53,
    timeout: float = DEFAULT_TIMEOUT,
    out: TextIO | None = None,
) -> tuple[int, list[Record]]:
    """`cmdeploy dns` without --zonefile: print the report; 1 if a required record lacks.
    Also the records checked, for the relay's daily check to expect."""
    out = out or sys.stdout
    if config.is_ipv4:
        print(f"{config.mail_domain} is an IPv4 relay: it has no DNS records.", file=out)
        return 0, []
    result = check_relay(
        config, facts, resolver, now=now, nameservers=nameservers, port=port, timeout=timeout
    )
    print(report(result), end="", file=out)
    code = 0 if result.ok else 1
    if not facts.dkim_public_key_b64:
        print("The relay has no DKIM key yet: deploy with `cmdeploy run` first.", file=out)
        code = 1
    if not (facts.ipv4 or facts.ipv6):
        print("The relay's IP addresses are unknown: no A/AAAA record checked.", file=out)
        code = 1
    return code, result.checked
