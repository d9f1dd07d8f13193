"""The gate's envelope addresses: one spelling each (doc/encryption-gate.md §1).

Postfix reads an SMTP path generously: it unquotes `"bob"@d`, drops a source route and a
trailing dot of the domain, folds case, and Dovecot cuts `+detail`. If the gate judged the
address as written while Postfix delivered to its own reading, a spelling could lead
cleartext past the check of the recipient's `enforceE2EEincoming`. So the gate accepts only
the plain RFC 5321 Dot-string form, writes the relay's own addresses in their one canonical
form (lowercase, account characters only), and re-injects exactly what it judged.

Pure functions over `str` (a path decoded from UTF-8 with surrogate escapes, so bytes that
are not UTF-8 show up as surrogates and are refused), but for `is_host_address`, which asks
the kernel and which AddressPolicy takes as a parameter.
"""

from __future__ import annotations

import errno
import functools
import ipaddress
import re
import socket
from collections.abc import Callable
from dataclasses import dataclass

from .smtpreject import Reject, internal_error, invalid_from_address, invalid_recipient

# RFC 5322 §3.2.3 atext; RFC 6531 adds any UTF-8 character beyond ASCII.
_ATEXT_ASCII = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+\Z")
# What an account name may hold (the same rule as account creation in `accounts`).
_ACCOUNT_LOCAL = re.compile(r"[a-z0-9._-]+\Z")
# A host name label; `_` is allowed because relays with self-signed certificates are named
# `_relay.example.org`.
_LABEL = re.compile(r"[A-Za-z0-9_-]{1,63}\Z")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class Mailbox:
    local: str
    domain: str

    def __str__(self) -> str:
        return f"{self.local}@{self.domain}"


def _is_atom(atom: str) -> bool:
    if not atom:
        return False
    if atom.isascii():
        return _ATEXT_ASCII.match(atom) is not None
    return all(_ATEXT_ASCII.match(ch) or _is_utf8_letter(ch) for ch in atom)


def _is_utf8_letter(ch: str) -> bool:
    """A non-ASCII character RFC 6531 allows: not a C1 control, not a surrogate escape."""
    code = ord(ch)
    return code > 0x9F and not 0xD800 <= code <= 0xDFFF and ch.isprintable()


def _is_dot_string(local: str) -> bool:
    return all(_is_atom(atom) for atom in local.split("."))


def ip_literal(domain: str) -> IPAddress | None:
    """The address of `[a.b.c.d]` or `[IPv6:…]` written in its one form (no leading zeros,
    IPv6 compressed and lowercase, no zone), else None."""
    if not (domain.startswith("[") and domain.endswith("]")):
        return None
    inner = domain[1:-1]
    text = inner[5:] if inner.startswith("IPv6:") else inner
    try:
        ip: IPAddress
        ip = ipaddress.IPv6Address(text) if text is not inner else ipaddress.IPv4Address(text)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.scope_id is not None:
        return None  # a zone (`%eth0`) may hold any text
    return ip if str(ip) == text else None


def _is_host_name(domain: str) -> bool:
    labels = domain.split(".")
    return (
        len(domain) <= 253
        and all(_LABEL.match(label) for label in labels)
        # all digits would read as an IP address without brackets
        and not labels[-1].isdigit()
    )


# The gate reads the same sender and recipient several times per message (MAIL, RCPT, the
# From field, the choice of re-injection port): a pure function, so the answer is kept.
@functools.lru_cache(maxsize=1024)
def parse_mailbox(text: str) -> Mailbox | None:
    """`local@domain` in the one syntax of §1.1, or None for anything else."""
    local, at, domain = text.partition("@")
    if not at or not _is_dot_string(local):
        return None
    if ip_literal(domain) is None and not _is_host_name(domain):
        return None
    return Mailbox(local, domain)


def _unmapped(ip: IPAddress) -> IPAddress:
    """An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`) as the IPv4 address it maps."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def is_host_address(ip: IPAddress) -> bool:
    """Whether `ip` is an address of this host. Postfix takes mail for an IP literal of any
    address it listens on as its own (doc/encryption-gate.md §1.2). The kernel knows the
    host's addresses: a socket may bind to those (and to all of 127.0.0.0/8), to no other.
    An error other than "not one of ours" is raised: the caller must not guess."""
    ip = _unmapped(ip)
    if ip.is_unspecified or ip.is_loopback:
        return True
    if isinstance(ip, ipaddress.IPv6Address) and ip.is_link_local:
        return True  # binding one needs its interface; Postfix compares the address alone
    family = socket.AF_INET if ip.version == 4 else socket.AF_INET6
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.bind((str(ip), 0))
    except OSError as e:
        if e.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT):  # not ours; no IPv6 here
            return False
        raise
    return True


class AddressPolicy:
    """Which envelope addresses the gate takes, and in which spelling (§1.2, §1.3)."""

    def __init__(
        self, address_domain: str, host_address: Callable[[IPAddress], bool] = is_host_address
    ) -> None:
        self.domain = address_domain.lower()
        self._own_ip = ip_literal(self.domain)
        self._host_address = host_address

    def _is_own_domain(self, domain: str) -> bool:
        if domain.lower() == self.domain:
            return True
        ip = ip_literal(domain)
        if ip is None or self._own_ip is None:
            return False
        return _unmapped(ip) == self._own_ip

    def local_address(self, text: str) -> str | None:
        """The canonical form of one of the relay's own addresses, or None."""
        mailbox = parse_mailbox(text)
        if mailbox is None or mailbox.domain.lower() != self.domain:
            return None
        if not mailbox.local.isascii():
            return None  # lower() would make `\u212a` (the Kelvin sign) a "k"
        local = mailbox.local.lower()
        if not _ACCOUNT_LOCAL.match(local):
            return None
        return f"{local}@{self.domain}"

    def outgoing_sender(self, text: str) -> str:
        """MAIL FROM of a submission: the sender's own address, canonical."""
        address = self.local_address(text)
        if address is None:
            raise invalid_from_address(text)
        return address

    def outgoing_recipient(self, text: str) -> str:
        """RCPT TO of a submission: a local address (canonical) or anybody else's."""
        mailbox = parse_mailbox(text)
        if mailbox is None:
            raise invalid_recipient("not in the one address syntax")
        if self._is_own_domain(mailbox.domain):
            address = self.local_address(text)
            if address is None:
                raise invalid_recipient("not a canonical local address")
            return address
        ip = ip_literal(mailbox.domain)
        if ip is not None:
            try:
                ours = self._host_address(_unmapped(ip))
            except OSError as e:
                why = f"recipient: could not tell an IP literal from the host's: {e.strerror}"
                raise internal_error(why) from None
            if ours:  # somebody else's to the gate, Postfix's own: read two ways
                raise invalid_recipient("an IP literal of this host")
        return str(mailbox)

    def incoming_recipient(self, text: str) -> str:
        """RCPT TO / X-MAIL-TO of mail from a peer: only the relay's own addresses."""
        address = self.local_address(text)
        if address is None:
            raise invalid_recipient("not a canonical local address")
        return address

    def incoming_sender(self, text: str) -> str:
        """MAIL FROM / X-MAIL-FROM of mail from a peer: as written, or "" (the null sender)."""
        mailbox = parse_mailbox(text)
        return "" if mailbox is None else str(mailbox)


__all__ = ["AddressPolicy", "Mailbox", "Reject", "is_host_address", "parse_mailbox"]
