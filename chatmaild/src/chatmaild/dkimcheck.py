"""The DKIM origin check of the incoming gate (doc/encryption-gate.md §3; DKIM is RFC 6376).

Filtermail's incoming front ends (SMTP on 10081 and `/mxdeliv` over HTTP) call
`DkimVerifier.check` after the content checks. Mail whose From domain is a DNS name
needs at least one DKIM signature that verifies *and* whose `d=` equals the From domain
exactly, ignoring case: strict alignment as with DMARC `adkim=s`, so parent and sub-domains do
not count. SPF, DMARC policy and reputation are not consulted. A From domain that is an IP
literal (`[a.b.c.d]`, `[IPv6:...]`) is not checked at all.

Replies (`smtpreject`): no `DKIM-Signature` header at all gives
`554 5.7.1 No DKIM signature found`; none that verifies and aligns gives
`554 5.7.1 No valid DKIM signature found`, unless a signer's key could not be looked up just
now (a DNS timeout or server failure): then `451 4.4.3` (RFC 6376 §6.1.2), and the peer tries
again. No copy of a refused message is kept anywhere (it would hold someone's mail on disk),
and there is no switch that turns the check off: tests pass the verifier a resolver of their
own instead. This module only decides.

Key lookup: a DNS TXT query for `<selector>._domainkey.<d>` with a 60 s timeout, and an
in-memory LRU cache of 1000 selector records; an entry is dropped when a verification with it
fails. Whitespace in the record is tolerated and `v=` is optional (dkimpy's tag parser and key
decoding already do both). A failed lookup never raises out of the check: a key that does not
exist means "not valid", one that could not be looked up for now is not cached and leads to the
`451` above.
The resolver is a parameter: tests pass a fake and never touch the network.

`check` is synchronous (RSA and DNS take time): an asyncio front end runs it in a thread, and
one verifier may serve several threads at once.

Choices of our own:

- Only signatures whose `d=` aligns are verified, so no key of an unrelated domain is ever
  fetched, and at most `MAX_ALIGNED_SIGNATURES` of them per message: a message cannot hold a
  thread for hours with hundreds of signatures whose key lookups time out.
- An internationalized From domain is compared in its A-label form (`xn--...`), the only form
  `d=` has in practice.
- dkimpy logs through a logger of its own that we silence: its lines hold the signature's `i=`
  (often an address) and key material.
- Ed25519 signatures (RFC 8463) need PyNaCl, which is not installed; they count as not valid,
  which matters only to a domain that signs with Ed25519 alone.
"""

from __future__ import annotations

import logging
import re
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import TypeAlias

import dkim  # type: ignore[import-untyped]  # dkimpy ships no type information
import dns.exception
import dns.resolver
from dkim.util import (  # type: ignore[import-untyped]
    InvalidTagValueList,
    parse_tag_value,
)

from .addresses import ip_literal
from .smtpreject import dkim_key_unavailable, no_dkim_signature, no_valid_dkim_signature

__all__ = [
    "DEFAULT_CACHE_SIZE",
    "DEFAULT_TIMEOUT",
    "MAX_ALIGNED_SIGNATURES",
    "DkimVerifier",
    "DnsTxtResolver",
    "ResolveTxt",
    "has_dkim_signature",
    "is_ip_literal",
]

ResolveTxt: TypeAlias = Callable[[str], list[bytes] | None]
"""Look up the TXT records of a name such as `sel._domainkey.example.org` (lowercase, no final
dot). Returns one bytes value per record, its character-strings already joined; an empty list
when the name or its TXT records do not exist (a permanent answer); None when the lookup
failed for now (timeout, server failure, no resolver). It should not raise; DNS and OS errors
it does raise count as None."""

DEFAULT_TIMEOUT = 60.0
DEFAULT_CACHE_SIZE = 1000
MAX_ALIGNED_SIGNATURES = 5

# A key record longer than this is used but not cached: an RSA 4096 key is about 800 bytes,
# and a hostile zone must not fill the cache with 64 KiB records.
_MAX_CACHED_RECORD = 4096

# What dkimpy raises on hostile input beyond its own DKIMException (base64, ASN.1 and tag
# parsing). Anything else is a bug and reaches the front end's generic 451.
_VERIFY_ERRORS: tuple[type[Exception], ...] = (
    dkim.DKIMException,
    InvalidTagValueList,
    ValueError,
    LookupError,
    TypeError,
    ArithmeticError,
)

# dkimpy's own logger, detached from the logging tree and switched off (see module docstring).
_DKIMPY_LOG = logging.Logger("chatmaild.dkimcheck.dkimpy")
_DKIMPY_LOG.disabled = True

_HEADER_END = re.compile(rb"\r?\n\r?\n")
_DKIM_HEADER = re.compile(rb"^dkim-signature[ \t]*:", re.IGNORECASE | re.MULTILINE)


class DnsTxtResolver:
    """The default `ResolveTxt`: dnspython's stub resolver (the relay's local unbound).

    The `dns.resolver.Resolver` (which reads /etc/resolv.conf) is made at the first lookup, so a
    verifier can be built without touching the system.
    """

    def __init__(self, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.timeout = timeout
        self._resolver: dns.resolver.Resolver | None = None

    def __call__(self, name: str) -> list[bytes] | None:
        try:
            if self._resolver is None:
                self._resolver = dns.resolver.Resolver()
            answer = self._resolver.resolve(name, "TXT", lifetime=self.timeout, search=False)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer, ValueError):
            return []  # the zone says there is no key: that will not change by retrying
        except dns.exception.DNSException:
            # read /etc/resolv.conf again next time: a fixed one then takes effect at once
            # (the lab saw a relay boot with a resolver it could not reach)
            self._resolver = None
            return None
        return [b"".join(rdata.strings) for rdata in answer]


def is_ip_literal(domain: str) -> bool:
    """True for an RFC 5321 address literal in its one form: `[192.0.2.1]`, `[IPv6:2001:db8::1]`
    (doc/encryption-gate.md §1.1); anything else gets the DKIM check."""
    return ip_literal(domain) is not None


def has_dkim_signature(data: bytes) -> bool:
    """True if the header section of `data` has a `DKIM-Signature` field (any form, any case)."""
    if data.startswith((b"\n", b"\r\n")):
        return False
    end = _HEADER_END.search(data)
    header = data if end is None else data[: end.start()]
    return _DKIM_HEADER.search(header) is not None


def _alignment_form(domain: str) -> str:
    """The From domain as `d=` would spell it: lowercase, A-labels for an IDN."""
    text = domain.lower()
    if text.isascii():
        return text
    try:
        return text.encode("idna").decode("ascii")
    except UnicodeError:
        return text  # matches no d=, which dkimpy requires to be ASCII


def _signing_domain(header_value: bytes) -> str | None:
    """The `d=` of one DKIM-Signature field value, lowercase; None if unreadable."""
    try:
        domain = parse_tag_value(header_value).get(b"d")
    except InvalidTagValueList:
        return None
    if not isinstance(domain, bytes) or not domain.isascii():
        return None
    return domain.decode("ascii").lower()


def _record_name(name: bytes) -> str | None:
    """dkimpy's query name (`sel._domainkey.d.`) as the cache key and the name to resolve."""
    try:
        text = name.decode("ascii")
    except UnicodeDecodeError:
        return None
    return text.lower().rstrip(".") or None


def _pick_key_record(records: list[bytes]) -> bytes | None:
    """The first TXT record that is a tag list with `p=`: a name may hold other TXT records."""
    for record in records:
        try:
            if b"p" in parse_tag_value(record):
                return record
        except InvalidTagValueList:
            continue
    return None


class DkimVerifier:
    """The origin check, with its selector-record cache. Thread-safe."""

    def __init__(
        self,
        resolve_txt: ResolveTxt | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        cache_size: int = DEFAULT_CACHE_SIZE,
    ) -> None:
        self.timeout = timeout
        self._resolve: ResolveTxt = (
            resolve_txt if resolve_txt is not None else DnsTxtResolver(timeout)
        )
        self._cache_size = cache_size
        self._cache: OrderedDict[str, bytes] = OrderedDict()
        self._lock = threading.Lock()

    def check(self, data: bytes, from_domain: str) -> None:
        """Return if `data` may come from `from_domain`; raise the `Reject` otherwise."""
        if is_ip_literal(from_domain):
            return
        if not has_dkim_signature(data):
            raise no_dkim_signature()
        domain = _alignment_form(from_domain)
        try:
            verifier = dkim.DKIM(data, logger=_DKIMPY_LOG, timeout=self.timeout)
        except _VERIFY_ERRORS:
            raise no_valid_dkim_signature() from None
        signatures = [
            value for name, value in verifier.headers if name.lower() == b"dkim-signature"
        ]
        tried = 0
        lookup_failed: list[str] = []
        for idx, value in enumerate(signatures):
            if not domain or _signing_domain(value) != domain:
                continue
            if tried == MAX_ALIGNED_SIGNATURES:
                break
            tried += 1
            if self._verify_one(verifier, idx, lookup_failed):
                return
        if lookup_failed:
            # the key may well be there: a 5xx would bounce mail a retry would let in
            raise dkim_key_unavailable()
        raise no_valid_dkim_signature()

    def cached_names(self) -> list[str]:
        """The selector records in the cache, least recently used first (for tests)."""
        with self._lock:
            return list(self._cache)

    def _verify_one(self, verifier: dkim.DKIM, idx: int, lookup_failed: list[str]) -> bool:
        """Verify signature `idx`; the names whose lookup failed for now go to `lookup_failed`."""
        used: list[str] = []

        def txt(name: bytes, timeout: float = DEFAULT_TIMEOUT) -> bytes | None:
            key = _record_name(name)
            if key is None:
                return None
            used.append(key)
            record, failed = self._lookup(key)
            if failed:
                lookup_failed.append(key)
            return record

        try:
            valid = bool(verifier.verify(idx=idx, dnsfunc=txt))
        except _VERIFY_ERRORS:
            valid = False
        if not valid:
            with self._lock:
                for key in used:
                    self._cache.pop(key, None)
        return valid

    def _lookup(self, name: str) -> tuple[bytes | None, bool]:
        """The key record of `name`, and whether the lookup failed for now (not cached)."""
        with self._lock:
            record = self._cache.get(name)
            if record is not None:
                self._cache.move_to_end(name)
                return record, False
        # Not under the lock: a lookup may take up to `timeout`, and other threads go on.
        try:
            records = self._resolve(name)
        except (dns.exception.DNSException, OSError):
            records = None
        if records is None:
            return None, True
        record = _pick_key_record(records) if records else None
        if record is not None and len(record) <= _MAX_CACHED_RECORD and self._cache_size > 0:
            with self._lock:
                self._cache[name] = record
                self._cache.move_to_end(name)
                while len(self._cache) > self._cache_size:
                    self._cache.popitem(last=False)
        return record, False
