"""The DKIM origin check on incoming mail (doc/encryption-gate.md).

Messages are signed at test time with the committed test keys in `data/dkim/`; the public keys
are served by a fake TXT lookup, so no test touches real DNS.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import dkim  # type: ignore[import-untyped]
import dns.exception
import dns.resolver
import pytest

from chatmaild import dkimcheck
from chatmaild.dkimcheck import (
    MAX_ALIGNED_SIGNATURES,
    DkimVerifier,
    DnsTxtResolver,
    has_dkim_signature,
    is_ip_literal,
)
from chatmaild.smtpreject import Reject

KEYS = Path(__file__).parent / "data" / "dkim"
KEY_A = (KEYS / "test-a.private").read_bytes()
KEY_B = (KEYS / "test-b.private").read_bytes()
PUB_A = (KEYS / "test-a.p").read_bytes().strip()
PUB_B = (KEYS / "test-b.p").read_bytes().strip()

NO_SIGNATURE = "554 5.7.1 No DKIM signature found"
NO_VALID = "554 5.7.1 No valid DKIM signature found"


def record(pub: bytes = PUB_A) -> bytes:
    return b"v=DKIM1; k=rsa; p=" + pub


class FakeDns:
    """A TXT zone in a dict; every lookup is recorded. A missing name has no record; a name
    mapped to None is a lookup that failed for now (a timeout)."""

    def __init__(self, zone: dict[str, list[bytes] | None] | None = None, *, key: bool = True):
        self.zone: dict[str, list[bytes] | None] = (
            {"sel._domainkey.example.org": [record()]} if key else {}
        )
        self.zone.update(zone or {})
        self.calls: list[str] = []

    def __call__(self, name: str) -> list[bytes] | None:
        self.calls.append(name)
        return self.zone.get(name, [])


def message(from_domain: str = "example.org", body: bytes = b"Hello.\r\n") -> bytes:
    return (
        f"From: <alice@{from_domain}>\r\n"
        "To: <bob@relay.test>\r\n"
        "Subject: ...\r\n"
        "Message-ID: <m1@example.org>\r\n"
        "MIME-Version: 1.0\r\n"
        "\r\n"
    ).encode() + body


def sign(
    msg: bytes, domain: str = "example.org", selector: str = "sel", key: bytes = KEY_A
) -> bytes:
    header: bytes = dkim.sign(msg, selector.encode(), domain.encode(), key)
    return header + msg


def reply_of(verifier: DkimVerifier, data: bytes, from_domain: str = "example.org") -> str:
    """The reply line `check` leads to: `250 OK` when it returns."""
    try:
        verifier.check(data, from_domain)
    except Reject as e:
        assert "@" not in e.private and "example" not in e.private  # no address in logs
        return e.reply()
    return "250 OK"


def test_valid_aligned_signature_passes() -> None:
    fake = FakeDns()
    assert reply_of(DkimVerifier(fake), sign(message())) == "250 OK"
    assert fake.calls == ["sel._domainkey.example.org"]


@pytest.mark.parametrize(
    "signer,from_domain",
    [("EXAMPLE.org", "example.org"), ("example.org", "Example.ORG")],
)
def test_alignment_ignores_case(signer: str, from_domain: str) -> None:
    data = sign(message(from_domain), domain=signer)
    assert reply_of(DkimVerifier(FakeDns()), data, from_domain) == "250 OK"


def test_no_signature() -> None:
    fake = FakeDns()
    assert reply_of(DkimVerifier(fake), message()) == NO_SIGNATURE
    assert fake.calls == []


@pytest.mark.parametrize(
    "signer,from_domain",
    [
        ("example.org", "chat.example.org"),  # parent domain
        ("mail.example.org", "example.org"),  # sub-domain
        ("other.test", "example.org"),  # unrelated
        ("example.org.evil.test", "example.org"),
    ],
)
def test_signature_by_another_domain_is_not_valid(signer: str, from_domain: str) -> None:
    # The signature itself verifies: only alignment fails.
    fake = FakeDns({f"sel._domainkey.{signer}": [record()]})
    data = sign(message(from_domain), domain=signer)
    assert reply_of(DkimVerifier(fake), data, from_domain) == NO_VALID
    assert fake.calls == []  # the key of a domain that cannot count is never fetched


def test_body_altered_after_signing() -> None:
    data = sign(message()).replace(b"Hello.", b"Hullo.")
    assert reply_of(DkimVerifier(FakeDns()), data) == NO_VALID


def test_header_altered_after_signing() -> None:
    data = sign(message()).replace(b"Subject: ...", b"Subject: !!!")
    assert reply_of(DkimVerifier(FakeDns()), data) == NO_VALID


def test_signed_with_another_key() -> None:
    assert reply_of(DkimVerifier(FakeDns()), sign(message(), key=KEY_B)) == NO_VALID


@pytest.mark.parametrize("good_first", [True, False])
def test_one_bad_and_one_good_signature_pass(good_first: bool) -> None:
    msg = message()
    bad = dkim.sign(msg, b"sel", b"example.org", KEY_B)  # DNS publishes key A for "sel"
    good = dkim.sign(msg, b"sel2", b"example.org", KEY_A)
    fake = FakeDns({"sel2._domainkey.example.org": [record()]})
    data = (good + bad if good_first else bad + good) + msg
    assert reply_of(DkimVerifier(fake), data) == "250 OK"


def test_aligned_and_unaligned_signatures() -> None:
    msg = message()
    data = dkim.sign(msg, b"sel", b"other.test", KEY_A) + dkim.sign(
        msg, b"sel", b"example.org", KEY_A
    )
    fake = FakeDns({"sel._domainkey.other.test": [record()]})
    assert reply_of(DkimVerifier(fake), data + msg) == "250 OK"
    assert fake.calls == ["sel._domainkey.example.org"]


def _timeout(name: str) -> list[bytes] | None:
    raise dns.exception.Timeout


def _os_error(name: str) -> list[bytes] | None:
    raise OSError("network unreachable")


DNS_FAILURES: dict[str, Any] = {
    "no such name": FakeDns(key=False),
    "no TXT record": FakeDns({"sel._domainkey.example.org": []}),
    "TXT without p=": FakeDns({"sel._domainkey.example.org": [b"v=spf1 -all"]}),
    "unparsable TXT": FakeDns({"sel._domainkey.example.org": [b"this is not a tag list"]}),
    "garbage key": FakeDns({"sel._domainkey.example.org": [b"p=AAAA"]}),
    "revoked key (empty p=)": FakeDns({"sel._domainkey.example.org": [b"v=DKIM1; p="]}),
}
# Lookups that failed for now: the key may exist, so the peer is asked to try again
DNS_TEMPFAILS: dict[str, Any] = {
    "failed lookup (None)": FakeDns({"sel._domainkey.example.org": None}),
    "resolver raises a DNS timeout": _timeout,
    "resolver raises OSError": _os_error,
}
TEMPFAIL = "451 4.4.3 Temporary failure looking up the DKIM key, try again later"


@pytest.mark.parametrize("resolve", DNS_FAILURES.values(), ids=DNS_FAILURES.keys())
def test_no_usable_key_means_not_valid(resolve: Any) -> None:
    verifier = DkimVerifier(resolve)
    assert reply_of(verifier, sign(message())) == NO_VALID
    assert verifier.cached_names() == []


@pytest.mark.parametrize("resolve", DNS_TEMPFAILS.values(), ids=DNS_TEMPFAILS.keys())
def test_a_lookup_that_failed_for_now_is_a_temporary_refusal(resolve: Any) -> None:
    verifier = DkimVerifier(resolve)
    assert reply_of(verifier, sign(message())) == TEMPFAIL
    assert verifier.cached_names() == []


def test_a_valid_signature_beside_a_failed_lookup_passes() -> None:
    zone = FakeDns({"other._domainkey.example.org": None})
    data = sign(sign(message(), selector="sel"), selector="other")
    assert reply_of(DkimVerifier(zone), data) == "250 OK"


def test_a_bad_signature_beside_a_failed_lookup_is_still_temporary() -> None:
    # the second signature may verify once its key can be looked up
    zone = FakeDns({"other._domainkey.example.org": None})
    data = sign(sign(message(), selector="sel", key=KEY_B), selector="other")
    assert reply_of(DkimVerifier(zone), data) == TEMPFAIL


def test_whitespace_in_record_and_no_version() -> None:
    spaced = b" ".join(PUB_A[i : i + 40] for i in range(0, len(PUB_A), 40))
    fake = FakeDns({"sel._domainkey.example.org": [b"  k = rsa ;\t p = " + spaced + b" ;"]})
    assert reply_of(DkimVerifier(fake), sign(message())) == "250 OK"


def test_key_record_among_other_txt_records() -> None:
    fake = FakeDns({"sel._domainkey.example.org": [b"some verification token", record()]})
    assert reply_of(DkimVerifier(fake), sign(message())) == "250 OK"


def test_second_verification_uses_the_cache() -> None:
    fake = FakeDns()
    verifier = DkimVerifier(fake)
    for _ in range(3):
        assert reply_of(verifier, sign(message())) == "250 OK"
    assert fake.calls == ["sel._domainkey.example.org"]
    assert verifier.cached_names() == ["sel._domainkey.example.org"]


def test_failed_verification_drops_the_cache_entry() -> None:
    fake = FakeDns()
    verifier = DkimVerifier(fake)
    assert reply_of(verifier, sign(message())) == "250 OK"
    assert reply_of(verifier, sign(message(), key=KEY_B)) == NO_VALID
    assert verifier.cached_names() == []
    assert reply_of(verifier, sign(message())) == "250 OK"
    assert len(fake.calls) == 2  # fetched again after the failure


def test_rotated_key_is_fetched_again_after_a_failure() -> None:
    fake = FakeDns()
    verifier = DkimVerifier(fake)
    assert reply_of(verifier, sign(message())) == "250 OK"
    fake.zone["sel._domainkey.example.org"] = [record(PUB_B)]  # the domain rotates its key
    assert reply_of(verifier, sign(message(), key=KEY_B)) == NO_VALID  # stale cached key
    assert reply_of(verifier, sign(message(), key=KEY_B)) == "250 OK"


def test_cache_is_lru_of_cache_size_records() -> None:
    zone: dict[str, list[bytes] | None] = {
        f"s{i}._domainkey.example.org": [record()] for i in range(3)
    }
    fake = FakeDns(zone)
    verifier = DkimVerifier(fake, cache_size=2)
    for selector in ("s0", "s1", "s0", "s2"):
        assert reply_of(verifier, sign(message(), selector=selector)) == "250 OK"
    assert verifier.cached_names() == ["s0._domainkey.example.org", "s2._domainkey.example.org"]


def test_at_most_a_few_aligned_signatures_are_tried() -> None:
    msg = message()
    headers = b"".join(dkim.sign(msg, f"s{i}".encode(), b"example.org", KEY_A) for i in range(12))
    fake = FakeDns(key=False)
    assert reply_of(DkimVerifier(fake), headers + msg) == NO_VALID
    assert len(fake.calls) == MAX_ALIGNED_SIGNATURES


@pytest.mark.parametrize("from_domain", ["[192.0.2.1]", "[IPv6:2001:db8::1]"])
def test_ip_literal_from_domain_is_not_checked(from_domain: str) -> None:
    fake = FakeDns()
    assert reply_of(DkimVerifier(fake), message(from_domain), from_domain) == "250 OK"
    assert fake.calls == []


@pytest.mark.parametrize("from_domain", ["[not-an-ip]", "[2001:db8::1]", "[192.0.2.300]"])
def test_bracketed_non_ip_is_checked(from_domain: str) -> None:
    assert reply_of(DkimVerifier(FakeDns()), message(from_domain), from_domain) == NO_SIGNATURE


@pytest.mark.parametrize(
    "data",
    [
        b"DKIM-Signature: nonsense\r\nFrom: <alice@example.org>\r\n\r\nx\r\n",
        b"DKIM-Signature: d=example.org; s=sel; b=!!; bh=!!\r\nFrom: <a@example.org>\r\n\r\n",
        b"DKIM-Signature: v=1; d=example.org; s=sel; a=rsa-sha256; h=from; b=; bh=\r\n\r\n",
        b"dkim-signature : d=example.org\r\nFrom: <alice@example.org>\r\n\r\nx\r\n",
        b"DKIM-Signature: d=example.org\r\nthis line has no colon\r\n\r\nx\r\n",
        b"DKIM-Signature: d=example.org; d=example.org\r\n\r\n",
        "DKIM-Signature: d=exämple.org\r\n\r\n".encode(),
    ],
)
def test_malformed_signatures_are_not_valid(data: bytes) -> None:
    assert reply_of(DkimVerifier(FakeDns()), data) == NO_VALID


def test_internationalized_from_domain_aligns_with_its_a_label() -> None:
    fake = FakeDns({"sel._domainkey.xn--bcher-kva.example": [record()]})
    data = sign(message("xn--bcher-kva.example"), domain="xn--bcher-kva.example")
    assert reply_of(DkimVerifier(fake), data, "bücher.example") == "250 OK"


def test_reply_texts() -> None:
    verifier = DkimVerifier(FakeDns())
    with pytest.raises(Reject) as no_sig:
        verifier.check(message(), "example.org")
    with pytest.raises(Reject) as no_valid:
        verifier.check(sign(message(), key=KEY_B), "example.org")
    assert no_sig.value.reply() == "554 5.7.1 No DKIM signature found"
    assert no_valid.value.reply() == "554 5.7.1 No valid DKIM signature found"


@pytest.mark.parametrize(
    "data,expected",
    [
        (b"DKIM-Signature: x\r\n\r\n", True),
        (b"From: a\r\ndkim-signature:x\r\n\r\n", True),
        (b"From: a\ndkim-signature\t: x\n\nbody", True),
        (b"From: a\r\n\r\nDKIM-Signature: in the body\r\n", False),
        (b"\r\nDKIM-Signature: in the body\r\n", False),
        (b"X-Not-DKIM-Signature: x\r\n\r\n", False),
        (b"From: a\r\n DKIM-Signature: folded into From\r\n\r\n", False),
    ],
)
def test_has_dkim_signature(data: bytes, expected: bool) -> None:
    assert has_dkim_signature(data) is expected


@pytest.mark.parametrize(
    "domain,expected",
    [
        ("[192.0.2.1]", True),
        ("[IPv6:2001:db8::1]", True),
        ("[ipv6:::1]", False),  # the tag is written "IPv6:" (one spelling)
        ("192.0.2.1", False),
        ("[2001:db8::1]", False),
        ("[IPv6:192.0.2.1]", False),
        ("[example.org]", False),
        ("example.org", False),
        ("", False),
    ],
)
def test_is_ip_literal(domain: str, expected: bool) -> None:
    assert is_ip_literal(domain) is expected


# --- the default resolver, with dnspython's Resolver replaced: still no network ----------------


class _Txt:
    def __init__(self, *strings: bytes) -> None:
        self.strings = strings


class _FakeResolver:
    answers: ClassVar[dict[str, Any]] = {}
    calls: ClassVar[list[tuple[str, str, float | None, bool | None]]] = []

    def resolve(
        self, name: str, rdtype: str, *, lifetime: float | None = None, search: bool | None = None
    ) -> Any:
        self.calls.append((name, rdtype, lifetime, search))
        answer = self.answers[name]
        if isinstance(answer, Exception):
            raise answer
        return answer


@pytest.fixture
def fake_resolver(monkeypatch: pytest.MonkeyPatch) -> type[_FakeResolver]:
    _FakeResolver.answers = {}
    _FakeResolver.calls = []
    monkeypatch.setattr(dns.resolver, "Resolver", _FakeResolver)
    return _FakeResolver


def test_default_resolver_is_made_lazily_and_only_without_injection(
    fake_resolver: type[_FakeResolver],
) -> None:
    default = DkimVerifier(timeout=7.0)
    assert isinstance(default._resolve, DnsTxtResolver)
    assert default._resolve._resolver is None  # nothing read or queried yet
    injected = DkimVerifier(FakeDns())
    assert not isinstance(injected._resolve, DnsTxtResolver)


def test_default_resolver_joins_strings_and_uses_the_timeout(
    fake_resolver: type[_FakeResolver],
) -> None:
    half = len(PUB_A) // 2
    fake_resolver.answers["sel._domainkey.example.org"] = [
        _Txt(b"v=DKIM1; k=rsa; p=", PUB_A[:half], PUB_A[half:])
    ]
    verifier = DkimVerifier(timeout=7.0)
    assert reply_of(verifier, sign(message())) == "250 OK"
    assert fake_resolver.calls == [("sel._domainkey.example.org", "TXT", 7.0, False)]


@pytest.mark.parametrize(
    "error",
    [dns.resolver.NXDOMAIN(), dns.resolver.NoAnswer(), ValueError("bad name")],
    ids=lambda e: type(e).__name__,
)
def test_default_resolver_no_key_means_not_valid(
    fake_resolver: type[_FakeResolver], error: Exception
) -> None:
    fake_resolver.answers["sel._domainkey.example.org"] = error
    assert DnsTxtResolver()("sel._domainkey.example.org") == []
    assert reply_of(DkimVerifier(), sign(message())) == NO_VALID


@pytest.mark.parametrize(
    "error",
    [
        dns.resolver.NoNameservers(),
        dns.resolver.LifetimeTimeout(timeout=60.0, errors=[]),
        dns.resolver.NoResolverConfiguration(),
    ],
    ids=lambda e: type(e).__name__,
)
def test_default_resolver_failures_for_now_are_temporary(
    fake_resolver: type[_FakeResolver], error: Exception
) -> None:
    fake_resolver.answers["sel._domainkey.example.org"] = error
    assert DnsTxtResolver()("sel._domainkey.example.org") is None
    assert reply_of(DkimVerifier(), sign(message())) == TEMPFAIL


def test_dkimpy_logs_nothing(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("DEBUG")
    reply_of(DkimVerifier(FakeDns({"sel._domainkey.example.org": None})), sign(message()))
    reply_of(DkimVerifier(FakeDns()), sign(message()).replace(b"Hello", b"Hullo"))
    assert caplog.records == []
    assert dkimcheck._DKIMPY_LOG.disabled


def test_after_a_failure_for_now_the_resolver_configuration_is_read_again(
    fake_resolver: type[_FakeResolver], monkeypatch: pytest.MonkeyPatch
) -> None:
    made: list[object] = []

    def counting_init(self: _FakeResolver) -> None:
        made.append(self)

    monkeypatch.setattr(fake_resolver, "__init__", counting_init)
    resolve = DnsTxtResolver()
    fake_resolver.answers["sel._domainkey.example.org"] = dns.resolver.NoNameservers()
    assert resolve("sel._domainkey.example.org") is None
    fake_resolver.answers["sel._domainkey.example.org"] = [_Txt(b"v=DKIM1; p=", PUB_A)]
    assert resolve("sel._domainkey.example.org") == [b"v=DKIM1; p=" + PUB_A]
    assert len(made) == 2  # made anew after the failure
    assert resolve("sel._domainkey.example.org") is not None and len(made) == 2
