from __future__ import annotations

from pathlib import Path

import pytest

from chatmaild.config import Config
from cmdeploy.preflight import (
    Lookup,
    PreflightError,
    check_target,
    dns_problems,
    parse_addresses,
    parse_listeners,
    parse_os_release,
    problems,
)
from cmdeploy.release import release_of

DEBIAN_12 = 'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nID=debian\nVERSION_ID="12"\n'
DEBIAN_13 = 'PRETTY_NAME="Debian GNU/Linux 13 (trixie)"\nID=debian\nVERSION_ID="13"\n'
DEBIAN_11 = 'PRETTY_NAME="Debian GNU/Linux 11 (bullseye)"\nID=debian\nVERSION_ID="11"\n'
# testing has no VERSION_ID until its release
FORKY = 'PRETTY_NAME="Debian GNU/Linux forky/sid"\nID=debian\nVERSION_CODENAME=forky\n'
UBUNTU = 'PRETTY_NAME="Ubuntu 24.04 LTS"\nID=ubuntu\nVERSION_ID="24.04"\n'
SS = """\
LISTEN 0 100 0.0.0.0:25 0.0.0.0:* users:(("master",pid=10,fd=13))
LISTEN 0 511 0.0.0.0:80 0.0.0.0:* users:(("nginx",pid=11,fd=6),("nginx",pid=12,fd=6))
LISTEN 0 128 0.0.0.0:22 0.0.0.0:* users:(("sshd",pid=9,fd=3))
LISTEN 0 4096 [::]:443 [::]:* users:(("apache2",pid=13,fd=4))
LISTEN 0 100 127.0.0.1:10081 0.0.0.0:* users:(("filtermail",pid=14,fd=7))
"""


def test_parse_listeners() -> None:
    assert parse_listeners(SS) == [
        ("0.0.0.0", 25, {"master"}),
        ("0.0.0.0", 80, {"nginx"}),
        ("0.0.0.0", 22, {"sshd"}),
        ("::", 443, {"apache2"}),
        ("127.0.0.1", 10081, {"filtermail"}),
    ]


@pytest.mark.parametrize(
    ("release", "sockets", "expected"),
    [
        (DEBIAN_12, "", []),
        (DEBIAN_12, SS, ["port 443 on relay.example is held by apache2"]),
        (DEBIAN_13, "", []),
        (UBUNTU, "", ["relay.example runs Ubuntu 24.04 LTS, but"]),
        (DEBIAN_11, "", ["relay.example runs Debian GNU/Linux 11 (bullseye), but"]),
        (FORKY, "", ["relay.example runs Debian GNU/Linux forky/sid, but"]),
        # port 53 matters on loopback only: a DNS server on another address is no conflict
        (DEBIAN_12, 'LISTEN 0 1 10.0.0.1:53 0.0.0.0:* users:(("nsd",pid=5,fd=3))', []),
        (
            DEBIAN_12,
            'LISTEN 0 1 127.0.0.1:53 0.0.0.0:* users:(("named",pid=5,fd=3))',
            ["port 53 on relay.example is held by named"],
        ),
    ],
)
def test_problems(release: str, sockets: str, expected: list[str]) -> None:
    found = problems(parse_os_release(release), parse_listeners(sockets), "relay.example")
    assert len(found) == len(expected)
    for paragraph, start in zip(found, expected, strict=True):
        assert paragraph.startswith(start)
        assert "then run `cmdeploy run` again" in paragraph  # says what to do next


@pytest.mark.parametrize(
    ("text", "release"),
    [(DEBIAN_12, "bookworm"), (DEBIAN_13, "trixie"), (DEBIAN_11, None), (FORKY, None),
     (UBUNTU, None), ("", None)],
)  # fmt: skip
def test_release_of(text: str, release: str | None) -> None:
    assert release_of(parse_os_release(text)) == release


def test_a_refused_system_is_one_paragraph_naming_both_releases() -> None:
    (paragraph,) = problems(parse_os_release(UBUNTU), [], "relay.example")
    assert "\n" not in paragraph
    assert "Debian 12 (bookworm) or Debian 13 (trixie)" in paragraph


def test_check_target_names_the_release(monkeypatch: pytest.MonkeyPatch) -> None:
    """What `cmdeploy run` prints: the release pre-flight found on the host."""
    answer = f"{DEBIAN_13}--- addresses\n--- sockets\n"
    monkeypatch.setattr("cmdeploy.preflight.command", lambda host, script: ["printf", "%s", answer])
    config = Config.from_params({"mail_domain": "chat.example.org"})
    assert check_target("relay.example", config) == "Debian 13 (trixie)"


# --- the DNS pre-check ------------------------------------------------------------------------

IP_ADDR = """\
2: eth0    inet 192.0.2.10/24 brd 192.0.2.255 scope global eth0\\       valid_lft forever
2: eth0    inet6 2001:db8::10/64 scope global \\       valid_lft forever preferred_lft forever
"""


def fake_dns(records: dict[tuple[str, str], list[str]]) -> Lookup:
    def lookup(name: str, rdtype: str) -> list[str]:
        if name == "timeout.example":
            raise LookupError("no answer within 10 s")
        return records.get((name, rdtype), [])

    return lookup


def config(domain: str) -> Config:
    return Config.from_params({"mail_domain": domain})


READY = {
    ("chat.example.org", "A"): ["192.0.2.10"],
    ("www.chat.example.org", "CNAME"): ["chat.example.org."],
    ("mta-sts.chat.example.org", "CNAME"): ["chat.example.org."],
}


def test_parse_addresses() -> None:
    assert parse_addresses(IP_ADDR) == ["192.0.2.10", "2001:db8::10"]


@pytest.mark.parametrize(
    ("domain", "records", "expected"),
    [
        ("chat.example.org", READY, []),
        # IPv6 written differently is the same address
        (
            "chat.example.org",
            {
                **READY,
                ("chat.example.org", "A"): [],
                ("chat.example.org", "AAAA"): ["2001:DB8:0::10"],
            },
            [],
        ),
        ("chat.example.org", {}, ["chat.example.org has no A or AAAA record yet"]),
        (
            "chat.example.org",
            {**READY, ("chat.example.org", "A"): ["198.51.100.7"]},
            ["chat.example.org points at 198.51.100.7, but relay.example has"],
        ),
        (
            "chat.example.org",
            {**READY, ("www.chat.example.org", "CNAME"): []},
            ["www.chat.example.org is not a CNAME of chat.example.org"],
        ),
        # a self-signed relay's certificate names nothing else: no CNAMEs needed
        ("_chat.example.org", {("_chat.example.org", "A"): ["192.0.2.10"]}, []),
        ("timeout.example", {}, ["cannot look up timeout.example: no answer within 10 s"]),
    ],
)
def test_dns_problems(
    domain: str, records: dict[tuple[str, str], list[str]], expected: list[str]
) -> None:
    found = dns_problems(
        config(domain), fake_dns(records), "relay.example", parse_addresses(IP_ADDR)
    )
    assert len(found) == len(expected), found
    for paragraph, start in zip(found, expected, strict=True):
        assert paragraph.startswith(start)
        assert "--skip-dns-check" in paragraph  # the way out for NAT and impatient operators


def test_a_missing_external_certificate_is_named(tmp_path: Path) -> None:
    key = tmp_path / "key.pem"
    key.write_text("present\n")
    cert = tmp_path / "missing-cert.pem"
    external = Config.from_params(
        {"mail_domain": "chat.example.org", "tls_external_cert_and_key": f"{cert} {key}"}
    )
    with pytest.raises(PreflightError) as raised:
        check_target("@local", external, lookup=None)
    message = str(raised.value)
    assert f"{cert} (tls_external_cert_and_key) does not exist on @local" in message
    assert str(key) + " " not in message
