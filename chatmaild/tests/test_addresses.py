"""Envelope addresses in one spelling (doc/encryption-gate.md §1): every spelling of a local
address either becomes its canonical form or is refused, in both directions."""

from __future__ import annotations

import errno
import ipaddress
import socket

import pytest

from chatmaild.addresses import AddressPolicy, is_host_address, parse_mailbox
from chatmaild.smtpreject import Reject

D = "relay.example"
HOST = ipaddress.ip_address("192.0.2.10")  # the relay's host, for these tests
RELAY = AddressPolicy(D, host_address=lambda ip: ip == HOST)
IPV4_RELAY = AddressPolicy("[192.0.2.10]")

# Every other spelling of bob@relay.example a peer might write, each of which Postfix (or
# Dovecot) could deliver to bob's mailbox or somewhere else of its choosing.
OTHER_SPELLINGS = [
    '"bob"@relay.example',  # Postfix unquotes
    '"bo b"@relay.example',
    '"bob@relay.example"@relay.example',  # Postfix resolves inside the quotes
    "bob@relay.example.",  # Postfix strips the dot
    "bob+news@relay.example",  # Dovecot drops the detail
    "bob%other.example@relay.example",  # percent hack
    "relay.example!bob@relay.example",  # bang path
    "other!bob@relay.example",
    "@x.example:bob@relay.example",  # source route
    "@x.example,@y.example:bob@relay.example",
    "bob@relay.example (comment)",
    "(comment)bob@relay.example",
    "bob @relay.example",
    " bob@relay.example",
    "bob@ relay.example",
    "bob@relay..example",
    ".bob@relay.example",
    "bob.@relay.example",
    "bo..b@relay.example",
    "bob@[192.0.2.10]",  # an IP literal of the host: Postfix may take it as local
    "bob@[IPv6:::ffff:192.0.2.10]",
    "bob@r\u0435lay.example",  # a Cyrillic ie for the e
    "bob@\uff52\uff45\uff4c\uff41\uff59.example",  # fullwidth: IDNA maps it to relay.example
    "bob@xn--rlay-3ve.example",  # an A-label that is not the relay's domain
    "bób@relay.example",
    "bob\x00@relay.example",
    "bob\r\n@relay.example",
    "bob\udcff@relay.example",  # a byte that is not UTF-8
    "bob@relay.example@relay.example",
    "bob",
    "@relay.example",
    "",
]


@pytest.mark.parametrize("spelling", OTHER_SPELLINGS)
def test_incoming_takes_no_other_spelling_of_a_local_address(spelling: str) -> None:
    with pytest.raises(Reject) as exc:
        RELAY.incoming_recipient(spelling)
    assert exc.value.reply() == "553 5.1.3 Invalid recipient address"


@pytest.mark.parametrize(
    "spelling", ["bob@relay.example", "Bob@relay.example", "BOB@RELAY.EXAMPLE", "bob@Relay.Example"]
)
def test_letter_case_becomes_the_one_mailbox_name(spelling: str) -> None:
    """Dovecot folds case; the gate judges and re-injects the folded form itself."""
    assert RELAY.incoming_recipient(spelling) == "bob@relay.example"
    assert RELAY.outgoing_recipient(spelling) == "bob@relay.example"
    assert RELAY.outgoing_sender(spelling) == "bob@relay.example"


@pytest.mark.parametrize("local", ["a", "a.b", "a_b", "a-b", "0123456789", "x.y-z_1"])
def test_account_names_are_taken_as_they_are(local: str) -> None:
    assert RELAY.incoming_recipient(f"{local}@{D}") == f"{local}@{D}"


# An A-label of another domain is somebody else's.
NOT_LOCAL_FOR_A_NAMED_RELAY = {"bob@xn--rlay-3ve.example"}


@pytest.mark.parametrize(
    "spelling",
    [s for s in OTHER_SPELLINGS if s not in NOT_LOCAL_FOR_A_NAMED_RELAY] + ["bob@RELAY.example."],
)
def test_outgoing_refuses_other_spellings_of_local_addresses(spelling: str) -> None:
    """To the gate they are neither local nor anyone else's: Postfix could deliver them here."""
    with pytest.raises(Reject) as exc:
        RELAY.outgoing_recipient(spelling)
    assert exc.value.code == 553


@pytest.mark.parametrize(
    ("rcpt", "expected"),
    [
        ("carol@other.example", "carol@other.example"),
        ("Carol.Smith@Other.Example", "Carol.Smith@Other.Example"),  # not ours: as written
        ("carol+tag@other.example", "carol+tag@other.example"),
        ("c!a#r$o%l&'*/=?^_`{|}~-@other.example", "c!a#r$o%l&'*/=?^_`{|}~-@other.example"),
        ("jörg@other.example", "jörg@other.example"),  # SMTPUTF8 local part (RFC 6531)
        ("carol@xn--mller-kva.example", "carol@xn--mller-kva.example"),
        ("carol@_relay2.example", "carol@_relay2.example"),  # a self-signed relay
        ("carol@[192.0.2.99]", "carol@[192.0.2.99]"),  # an IPv4 relay
        ("carol@[IPv6:2001:db8::1]", "carol@[IPv6:2001:db8::1]"),
    ],
)
def test_outgoing_recipients_elsewhere_pass_as_written(rcpt: str, expected: str) -> None:
    assert RELAY.outgoing_recipient(rcpt) == expected


@pytest.mark.parametrize(
    "rcpt",
    [
        '"carol"@other.example',
        "carol@other.example.",
        "carol@müller.example",  # IDNs as A-labels only
        "carol@[192.0.2.099]",
        "carol@[300.0.2.1]",
        "carol@[tag:text]",
        "carol@1.2.3.4",  # a numeric domain without brackets
        "@x:carol@other.example",
        "carol@other.example (x)",
    ],
)
def test_outgoing_recipients_elsewhere_in_another_syntax_are_refused(rcpt: str) -> None:
    with pytest.raises(Reject):
        RELAY.outgoing_recipient(rcpt)


# the IPv4-mapped form in its one spelling, which depends on the Python version (gh-87799)
MAPPED = f"[IPv6:{ipaddress.IPv6Address(f'::ffff:{HOST}')}]"


@pytest.mark.parametrize("rcpt", ["bob@[192.0.2.10]", "carol@[192.0.2.10]", f"bob@{MAPPED}"])
def test_outgoing_refuses_an_ip_literal_of_the_host(rcpt: str) -> None:
    """Postfix delivers it here, as its own; the gate would have judged it as somebody else's
    (and Dovecot, knowing no such account, would have bounced it after the client's 250)."""
    with pytest.raises(Reject) as exc:
        RELAY.outgoing_recipient(rcpt)
    assert exc.value.reply() == "553 5.1.3 Invalid recipient address"
    assert exc.value.private == "recipient: an IP literal of this host"


def test_a_host_address_that_cannot_be_checked_is_a_temporary_error() -> None:
    def failing(ip: object) -> bool:
        raise OSError(errno.EMFILE, "Too many open files")

    relay = AddressPolicy(D, host_address=failing)
    with pytest.raises(Reject) as exc:
        relay.outgoing_recipient("carol@[192.0.2.99]")
    assert exc.value.reply() == "451 4.3.0 Internal error, please try again later"
    assert "192.0.2.99" not in exc.value.private  # logged: no address in it
    assert relay.outgoing_recipient("carol@other.example") == "carol@other.example"


def test_the_probe_raises_what_it_cannot_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_sockets(*args: object) -> socket.socket:
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr(socket, "socket", no_sockets)
    with pytest.raises(OSError):
        is_host_address(ipaddress.ip_address("192.0.2.1"))


@pytest.mark.parametrize(
    "ip", ["127.0.0.1", "127.0.0.2", "0.0.0.0", "::1", "::ffff:127.0.0.1", "::", "fe80::1"]
)
def test_loopback_unspecified_and_link_local_addresses_are_the_hosts(ip: str) -> None:
    assert is_host_address(ipaddress.ip_address(ip))


@pytest.mark.parametrize("ip", ["192.0.2.1", "198.51.100.7", "2001:db8::1", "::ffff:192.0.2.1"])
def test_documentation_addresses_are_not_the_hosts(ip: str) -> None:
    assert not is_host_address(ipaddress.ip_address(ip))


def test_the_hosts_own_outward_address_is_the_hosts() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # picks the source address; sends nothing
        except OSError:
            pytest.skip("no IPv4 route on this host")
        own = ipaddress.ip_address(probe.getsockname()[0])
    assert is_host_address(own)
    assert AddressPolicy(D).outgoing_recipient("carol@[192.0.2.1]") == "carol@[192.0.2.1]"
    with pytest.raises(Reject):
        AddressPolicy(D).outgoing_recipient(f"carol@[{own}]")


def test_ipv4_relay_addresses() -> None:
    assert IPV4_RELAY.incoming_recipient("bob@[192.0.2.10]") == "bob@[192.0.2.10]"
    assert IPV4_RELAY.outgoing_recipient("Bob@[192.0.2.10]") == "bob@[192.0.2.10]"
    for other in ["bob@[IPv6:::ffff:192.0.2.10]", "bob@[192.0.2.010]", "bob@192.0.2.10"]:
        with pytest.raises(Reject):
            IPV4_RELAY.incoming_recipient(other)
        with pytest.raises(Reject):
            IPV4_RELAY.outgoing_recipient(other)
    assert IPV4_RELAY.outgoing_recipient("carol@relay.example") == "carol@relay.example"


@pytest.mark.parametrize(
    "sender", ["", "bob", "bob+x@relay.example", '"bob"@relay.example', "carol@other.example"]
)
def test_outgoing_sender_must_be_a_local_address(sender: str) -> None:
    with pytest.raises(Reject) as exc:
        RELAY.outgoing_sender(sender)
    assert exc.value.reply().startswith("500 Invalid from address <")


@pytest.mark.parametrize(
    ("sender", "expected"),
    [
        ("carol@other.example", "carol@other.example"),
        ("bounces+x=y@lists.example", "bounces+x=y@lists.example"),
        ("", ""),  # the null sender of bounces
        ('"carol"@other.example', ""),  # another syntax: the null sender, nothing to refuse
        ("@x:carol@other.example", ""),
        ("carol@other.example.", ""),
    ],
)
def test_incoming_sender(sender: str, expected: str) -> None:
    assert RELAY.incoming_sender(sender) == expected


def test_parse_mailbox_keeps_the_parts() -> None:
    mailbox = parse_mailbox("Carol.S@Other.Example")
    assert mailbox is not None
    assert (mailbox.local, mailbox.domain, str(mailbox)) == (
        "Carol.S",
        "Other.Example",
        "Carol.S@Other.Example",
    )


def test_private_reason_names_no_address() -> None:
    with pytest.raises(Reject) as exc:
        RELAY.incoming_recipient('"secretname"@relay.example')
    assert "secretname" not in exc.value.private and "relay" not in exc.value.private


@pytest.mark.parametrize(
    "literal",
    [
        "[IPv6:fe80::1%eth0]",  # a zone: any text, spaces and `]` included
        "[IPv6:fe80::1%a] NOTIFY=NEVER",
        "[IPv6:0:0:0:0:0:0:0:1]",  # not compressed
        "[IPv6:::FFFF:192.0.2.1]",  # upper case
        "[ipv6:::1]",  # the tag is written "IPv6:"
        "[192.0.2.01]",
    ],
)
def test_ip_literals_in_one_spelling_only(literal: str) -> None:
    assert parse_mailbox(f"carol@{literal}") is None


def test_ip_literals_in_their_one_spelling() -> None:
    for literal in ("[IPv6:::1]", "[IPv6:2001:db8::1]", "[192.0.2.1]"):
        assert parse_mailbox(f"carol@{literal}") is not None


def test_a_letter_that_lowercases_into_ascii_is_no_local_address() -> None:
    """`\u212a` (the Kelvin sign) lowercases to `k`: not an account character to begin with."""
    with pytest.raises(Reject):
        RELAY.incoming_recipient("\u212aelvin@relay.example")
