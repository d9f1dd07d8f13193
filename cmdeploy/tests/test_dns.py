"""`cmdeploy dns`: golden zone files, then real checks against a private NSD.

The check tests serve zones from Debian's NSD on 127.0.0.1 and a free port, and point both the
resolver and the direct authoritative queries at it; nothing here asks a real DNS server.
Regenerate the golden files with `CMDEPLOY_UPDATE_GOLDEN=1 venv/bin/pytest -k golden`.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import dns.exception
import dns.message
import dns.query
import dns.rdata
import dns.rdtypes.txtbase
import dns.resolver
import pytest
from free_ports import free_port

from chatmaild.config import Config
from cmdeploy.dns import (
    CheckResult,
    Record,
    RelayFacts,
    check,
    dkim_key_from_pem,
    existing_sts_id,
    quote_txt,
    report,
    run_dns_check,
    txt_text,
    unsplit_dkim,
    zone_records,
    zonefile,
)

DATA = Path(__file__).parent / "data" / "dns"
NOW = datetime(2024, 5, 1, 12, 30, tzinfo=UTC)
DKIM_KEY = dkim_key_from_pem((DATA / "dkim-test-public.pem").read_text())
ACCOUNT = "https://acme-v02.api.letsencrypt.org/acme/acct/123456789"
FACTS = RelayFacts(
    ipv4="192.0.2.10",
    ipv6="2001:db8::10",
    dkim_public_key_b64=DKIM_KEY,
    acme_account_uri=ACCOUNT,
    sts_id=None,
)


def config(domain: str, **params: str) -> Config:
    return Config.from_params({"mail_domain": domain, **params})


# --- generation ---------------------------------------------------------------------------

GOLDEN = {
    "acme.zone": (config("chat.example.org"), FACTS),
    "acme-no-ipv6.zone": (
        config("chat.example.org"),
        replace(FACTS, ipv6=None, sts_id="202301011200"),
    ),
    "self-signed.zone": (config("_chat.example.org"), FACTS),
    "self-signed-no-ipv6.zone": (config("_chat.example.org"), replace(FACTS, ipv6=None)),
}


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_zonefile_golden(name: str) -> None:
    cfg, facts = GOLDEN[name]
    text = zonefile(zone_records(cfg, facts, NOW))
    golden = DATA / name
    if os.environ.get("CMDEPLOY_UPDATE_GOLDEN"):
        golden.write_text(text)
    assert text == golden.read_text()


def test_records_of_an_acme_relay() -> None:
    records = zone_records(config("chat.example.org"), FACTS, NOW)
    required = {(r.name, r.type) for r in records if r.required}
    assert required == {
        ("chat.example.org.", "A"),
        ("chat.example.org.", "AAAA"),
        ("chat.example.org.", "MX"),
        ("_mta-sts.chat.example.org.", "TXT"),
        ("mta-sts.chat.example.org.", "CNAME"),
        ("www.chat.example.org.", "CNAME"),
        ("opendkim._domainkey.chat.example.org.", "TXT"),
    }
    recommended = {(r.name, r.type) for r in records if not r.required}
    assert recommended == {
        ("chat.example.org.", "TXT"),
        ("_dmarc.chat.example.org.", "TXT"),
        ("chat.example.org.", "CAA"),
        ("_adsp._domainkey.chat.example.org.", "TXT"),
        ("_submission._tcp.chat.example.org.", "SRV"),
        ("_submissions._tcp.chat.example.org.", "SRV"),
        ("_imap._tcp.chat.example.org.", "SRV"),
        ("_imaps._tcp.chat.example.org.", "SRV"),
    }
    assert all(r.ttl == 3600 for r in records)
    assert [r.required for r in records] == sorted((r.required for r in records), reverse=True)


def test_self_signed_relay_has_no_mta_sts_and_no_caa() -> None:
    records = zone_records(config("_chat.example.org"), FACTS, NOW)
    types = {(r.name, r.type) for r in records}
    assert ("_mta-sts._chat.example.org.", "TXT") not in types
    assert ("mta-sts._chat.example.org.", "CNAME") not in types
    assert all(r.type != "CAA" for r in records)
    assert ("www._chat.example.org.", "CNAME") in types


def test_external_certificate_has_no_mta_sts_and_no_caa() -> None:
    cfg = config("chat.example.org", tls_external_cert_and_key="/c.pem /k.pem")
    records = zone_records(cfg, FACTS, NOW)
    assert not [r for r in records if r.type == "CAA" or "mta-sts" in r.name]


def test_sts_id_is_kept_or_made_from_now() -> None:
    cfg = config("chat.example.org")

    def sts(facts: RelayFacts) -> str:
        (record,) = [r for r in zone_records(cfg, facts, NOW) if r.name.startswith("_mta-sts.")]
        return record.value

    assert sts(FACTS) == '"v=STSv1; id=202405011230"'
    assert sts(replace(FACTS, sts_id="20200101")) == '"v=STSv1; id=20200101"'


def test_unknown_facts_leave_their_records_out() -> None:
    facts = RelayFacts(None, None, None, None, None)
    records = zone_records(config("chat.example.org"), facts, NOW)
    assert not [r for r in records if r.type in ("A", "AAAA", "CAA") or "opendkim" in r.name]


def test_disable_ipv6_leaves_out_aaaa() -> None:
    records = zone_records(config("chat.example.org", disable_ipv6="true"), FACTS, NOW)
    assert "AAAA" not in {r.type for r in records}


def test_ipv4_relay_has_no_records(capsys: pytest.CaptureFixture[str]) -> None:
    cfg = config("192.0.2.10")
    assert zone_records(cfg, FACTS, NOW) == []
    assert zonefile([]) == "; No DNS records: an IPv4 relay has no DNS name.\n"
    assert report(CheckResult([])) == "No DNS records to check: an IPv4 relay has no DNS name.\n"
    resolver = dns.resolver.Resolver(configure=False)  # never asked
    assert run_dns_check(cfg, FACTS, resolver) == (0, [])
    assert "IPv4 relay" in capsys.readouterr().out


def dkim_record(records: list[Record]) -> Record:
    (record,) = [r for r in records if r.name.startswith("opendkim._domainkey.")]
    return record


def assert_dkim_split(key: str) -> None:
    records = zone_records(config("chat.example.org"), replace(FACTS, dkim_public_key_b64=key), NOW)
    record = dkim_record(records)
    content = f"v=DKIM1;k=rsa;p={key};s=email;t=s"
    rd = dns.rdata.from_text("IN", "TXT", record.value)
    assert isinstance(rd, dns.rdtypes.txtbase.TXTBase)
    strings = [s.decode() for s in rd.strings]
    assert len(strings) == 2  # a 2048-bit key: 422 characters
    assert [len(s) for s in strings[:-1]] == [255] * (len(strings) - 1)
    assert len(strings[-1]) <= 255
    assert "".join(strings) == content
    assert unsplit_dkim(records) == content == txt_text(record.value)
    assert f"; {content}\n" in zonefile(records)


def test_dkim_split_of_the_committed_key() -> None:
    assert len(DKIM_KEY) == 392  # base64 of a 2048-bit RSA SubjectPublicKeyInfo
    assert_dkim_split(DKIM_KEY)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")
def test_dkim_split_of_a_fresh_key(tmp_path: Path) -> None:
    private = subprocess.run(["openssl", "genrsa", "2048"], check=True, capture_output=True).stdout
    pem = subprocess.run(
        ["openssl", "rsa", "-pubout"], input=private, check=True, capture_output=True
    ).stdout.decode()
    assert_dkim_split(dkim_key_from_pem(pem))


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("", '""'),
        ('say "hi"', r'"say \"hi\""'),
        ("x" * 256, '"' + "x" * 255 + '" "x"'),
    ],
)
def test_quote_txt(text: str, value: str) -> None:
    assert quote_txt(text) == value
    assert txt_text(value) == text


# --- a private authoritative server -------------------------------------------------------


def zone_text(origin: str, lines: list[str]) -> str:
    head = [
        f"{origin} 3600 IN SOA ns1.{origin} hostmaster.{origin} 1 3600 600 86400 300",
        f"{origin} 3600 IN NS ns1.{origin}",
        f"ns1.{origin} 3600 IN A 127.0.0.1",
    ]
    return "\n".join(head + lines) + "\n"


BROKEN_FACTS = replace(FACTS, sts_id="202401010000")


def broken_zone() -> str:
    """chat.example.org inside the zone example.org, with deliberate faults."""
    records = zone_records(config("chat.example.org"), BROKEN_FACTS, NOW)
    lines = []
    for r in records:
        if (r.name, r.type) == ("chat.example.org.", "A"):
            lines.append(f"{r.name} 3600 IN A 192.0.2.99")  # wrong (required)
        elif r.name.startswith("www."):
            continue  # missing (required)
        elif r.name.startswith("mta-sts."):
            lines.append(f"{r.name} 3600 IN CNAME other.example.org.")  # wrong (required)
        elif r.type == "MX":
            lines.append(f"{r.name} 3600 IN MX 10 CHAT.Example.ORG.")  # fine: case
        elif r.name.startswith("opendkim."):
            content = txt_text(r.value)  # fine: split differently
            parts = [content[i : i + 100] for i in range(0, len(content), 100)]
            lines.append(f"{r.name} 3600 IN TXT " + " ".join(f'"{p}"' for p in parts))
        elif (r.name, r.type) == ("chat.example.org.", "TXT"):
            lines.append(f'{r.name} 3600 IN TXT "v=spf1 mx -all"')  # wrong (recommended)
            lines.append(f'{r.name} 3600 IN TXT "google-site-verification=abc"')
        elif r.name.startswith("_dmarc."):
            lines.append(f'{r.name} 3600 IN TXT "v=DMARC1; p=reject; adkim=s; aspf=s"')  # fine
        elif r.name.startswith(("_adsp.", "_imap.")) or r.type == "CAA":
            continue  # missing (recommended)
        else:
            lines.append(r.line())
    return zone_text("example.org.", lines)


def good_zone() -> str:
    """relay.test as its own zone, complete but for the recommended CAA record."""
    records = zone_records(config("relay.test"), BROKEN_FACTS, NOW)
    return zone_text("relay.test.", [r.line() for r in records if r.type != "CAA"])


def nsd_missing() -> str | None:
    if shutil.which("nsd") is None:
        return "needs Debian's nsd (scripts/test installs it)"
    return None


@pytest.fixture(scope="module")
def nsd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """NSD serving example.org and relay.test on 127.0.0.1:<port>; yields the port."""
    missing = nsd_missing()
    if missing and os.environ.get("CI"):
        pytest.fail(f"DNS check tests cannot run: {missing}")
    if missing:
        pytest.skip(missing)
    d = tmp_path_factory.mktemp("nsd")
    (d / "example.org.zone").write_text(broken_zone())
    (d / "relay.test.zone").write_text(good_zone())
    port = free_port()
    (d / "nsd.conf").write_text(
        f"""server:
    ip-address: 127.0.0.1
    port: {port}
    do-ip6: no
    username: ""
    chroot: ""
    zonesdir: "{d}"
    database: ""
    zonelistfile: "{d}/zone.list"
    xfrdfile: "{d}/xfrd.state"
    xfrdir: "{d}"
    pidfile: "{d}/nsd.pid"
    logfile: "{d}/nsd.log"
    server-count: 1
    verbosity: 1
remote-control:
    control-enable: no
zone:
    name: example.org
    zonefile: example.org.zone
zone:
    name: relay.test
    zonefile: relay.test.zone
"""
    )
    proc = subprocess.Popen(
        ["nsd", "-d", "-c", str(d / "nsd.conf")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 15
        query = dns.message.make_query("relay.test.", "SOA")
        while True:
            try:
                dns.query.udp(query, "127.0.0.1", port=port, timeout=0.2)
                break
            except dns.exception.Timeout:
                log = (d / "nsd.log").read_text() if (d / "nsd.log").exists() else ""
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"nsd did not start: {log}")
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def local_resolver(port: int) -> dns.resolver.Resolver:
    """A stub resolver that only knows the private server (no /etc/resolv.conf)."""
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = ["127.0.0.1"]
    resolver.port = port
    resolver.lifetime = 2.0
    return resolver


def problems(result: CheckResult) -> dict[str, set[tuple[str, str]]]:
    """{"required_missing": {(name, type), ...}, "recommended_wrong": ..., ...}"""
    grouped: dict[str, set[tuple[str, str]]] = {
        f"{level}_{kind}": set()
        for level in ("required", "recommended")
        for kind in ("missing", "wrong")
    }
    for p in result.problems:
        level = "required" if p.record.required else "recommended"
        grouped[f"{level}_{p.kind}"].add((p.record.name, p.record.type))
    return grouped


# --- checking against it ------------------------------------------------------------------


def test_check_finds_exactly_the_faults(nsd: int) -> None:
    records = zone_records(config("chat.example.org"), BROKEN_FACTS, NOW)
    result = check(records, local_resolver(nsd), port=nsd, timeout=2.0)
    assert problems(result) == {
        "required_missing": {("www.chat.example.org.", "CNAME")},
        "required_wrong": {
            ("chat.example.org.", "A"),
            ("mta-sts.chat.example.org.", "CNAME"),
        },
        "recommended_missing": {
            ("_adsp._domainkey.chat.example.org.", "TXT"),
            ("_imap._tcp.chat.example.org.", "SRV"),
            ("chat.example.org.", "CAA"),
        },
        "recommended_wrong": {("chat.example.org.", "TXT")},
    }
    assert not result.ok
    reasons = {(p.record.name, p.record.type): p.reason for p in result.problems}
    assert reasons[("chat.example.org.", "A")] == "127.0.0.1 has 192.0.2.99"
    assert reasons[("www.chat.example.org.", "CNAME")] == "no such name (NXDOMAIN) at 127.0.0.1"
    assert reasons[("chat.example.org.", "TXT")] == '127.0.0.1 has "v=spf1 mx -all"'
    assert reasons[("chat.example.org.", "CAA")] == "no matching CAA record at 127.0.0.1"

    text = report(result)
    lines = text.splitlines()
    assert lines[0] == (
        "wrong (required): chat.example.org. 3600 IN A 192.0.2.10  ; 127.0.0.1 has 192.0.2.99"
    )
    assert "missing (required): www.chat.example.org. 3600 IN CNAME chat.example.org.  ;" in text
    assert lines[-1] == "3 required and 4 recommended of 15 DNS records need attention."
    assert len(lines) == 8  # one per problem and the summary: DKIM is in place


def test_run_dns_check_exit_codes(nsd: int) -> None:
    out = io.StringIO()
    facts = replace(FACTS, sts_id=None)  # the existing id is found in the zone and kept
    code, _ = run_dns_check(
        config("relay.test"), facts, local_resolver(nsd), now=NOW, port=nsd, timeout=2.0, out=out
    )
    assert code == 0, out.getvalue()
    assert out.getvalue() == (
        "missing (recommended): relay.test. 3600 IN CAA "
        f'0 issue "letsencrypt.org;accounturi={ACCOUNT}"  ; no matching CAA record at 127.0.0.1\n'
        "0 required and 1 recommended of 15 DNS records need attention.\n"
    )

    out = io.StringIO()
    code, _ = run_dns_check(
        config("chat.example.org"),
        facts,
        local_resolver(nsd),
        now=NOW,
        port=nsd,
        timeout=2.0,
        out=out,
    )
    assert code == 1
    assert "missing (required): www.chat.example.org." in out.getvalue()


def test_the_relays_daily_check_judges_the_records_cmdeploy_dns_printed(nsd: int) -> None:
    """The records `cmdeploy dns` checked become the relay's expectations; chatmail-health asks
    its resolver (here NSD itself) and calls the same records right or wrong."""
    from chatmaild.health import check_dns
    from chatmaild.healthcmd import make_lookup
    from cmdeploy.health import dns_expectations

    lookup = make_lookup("127.0.0.1", nsd)
    facts = replace(FACTS, sts_id=None)
    for domain, ok in (("relay.test", True), ("chat.example.org", False)):
        code, records = run_dns_check(
            config(domain), facts, local_resolver(nsd), now=NOW, port=nsd, out=io.StringIO()
        )
        assert (code == 0) == ok
        expected = json.loads(dns_expectations(records))["records"]
        section = check_dns(expected, lookup)
        assert section.data["checked"] == len(records)
        if ok:
            assert section.problems == []
            assert section.warnings == [f"recommended CAA {domain}. is missing"]
        else:
            assert "required CNAME www.chat.example.org. is missing" in section.problems
            assert "required A chat.example.org. is wrong (has 192.0.2.99)" in section.problems


def test_run_dns_check_without_dkim_key_fails(nsd: int) -> None:
    out = io.StringIO()
    facts = replace(BROKEN_FACTS, dkim_public_key_b64=None)
    code, _ = run_dns_check(config("relay.test"), facts, local_resolver(nsd), port=nsd, out=out)
    assert code == 1
    assert "no DKIM key yet" in out.getvalue()


def test_existing_sts_id(nsd: int) -> None:
    resolver = local_resolver(nsd)
    assert existing_sts_id("relay.test", resolver, port=nsd) == "202401010000"
    assert existing_sts_id("nosts.relay.test", resolver, port=nsd) is None


def test_check_with_given_nameservers(nsd: int) -> None:
    records = zone_records(config("relay.test"), BROKEN_FACTS, NOW)
    unused = dns.resolver.Resolver(configure=False)  # discovery is skipped
    result = check(records, unused, nameservers=["127.0.0.1"], port=nsd, timeout=2.0)
    assert result.ok
    assert [(p.record.type, p.kind) for p in result.problems] == [("CAA", "missing")]


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A UDP port that receives and never answers (no ICMP refusal either)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])


def test_silent_nameserver_is_missing_within_bounded_time(silent_port: int) -> None:
    records = zone_records(config("chat.example.org"), FACTS, NOW)
    unused = dns.resolver.Resolver(configure=False)
    start = time.monotonic()
    result = check(records, unused, nameservers=["127.0.0.1"], port=silent_port, timeout=0.3)
    elapsed = time.monotonic() - start
    assert elapsed < 2.0  # one wait, not one per record
    assert {p.kind for p in result.problems} == {"missing"}
    assert len(result.problems) == len(records)
    assert result.problems[0].reason == ("could not be looked up: 127.0.0.1: no answer within 0.3s")
    assert not result.ok


def test_silent_resolver_is_missing_within_bounded_time(silent_port: int) -> None:
    records = zone_records(config("chat.example.org"), FACTS, NOW)
    resolver = local_resolver(silent_port)
    start = time.monotonic()
    result = check(records, resolver, port=silent_port, timeout=0.3)
    assert time.monotonic() - start < 2.0
    missing = [p for p in result.problems if p.record.required and p.kind == "missing"]
    assert len(missing) == sum(r.required for r in records)
    assert {p.reason for p in result.problems} == {
        "could not be looked up: the DNS resolver did not answer within 0.3s"
    }
    out = io.StringIO()
    code, _ = run_dns_check(
        config("chat.example.org"), FACTS, resolver, now=NOW, port=silent_port, timeout=0.3, out=out
    )
    assert code == 1
    assert "did not answer within 0.3s" in out.getvalue()
