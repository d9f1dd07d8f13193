"""Whether the values DNS serves for a name and type match the record the relay expects.

Shared by `cmdeploy dns` (which asks the zone's authoritative nameservers from the operator's
machine) and `chatmail-health` (which asks the relay's own resolver every day): both must
call the same record right or wrong. Pure: the caller does the lookups.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import dns.name
import dns.rdata
import dns.rdataclass
import dns.rdtypes.ANY.CAA
import dns.rdtypes.txtbase

# A, AAAA, CNAME, MX: another value beside ours sends clients or mail elsewhere.
SINGLE_VALUED = frozenset({"A", "AAAA", "CNAME", "MX"})

MISSING = "missing"
WRONG = "wrong"


def key(rd: dns.rdata.Rdata) -> str:
    """A comparable form: names lowercased and absolute, TXT strings joined (RFC 7208 §3.3
    and RFC 6376 §3.6.2.2 join a record's strings before reading it)."""
    if isinstance(rd, dns.rdtypes.txtbase.TXTBase):
        text = b"".join(rd.strings).decode(errors="replace")
        return re.sub(r"\s*;\s*", ";", text.strip()).rstrip(";")
    if isinstance(rd, dns.rdtypes.ANY.CAA.CAA):
        return f"{rd.flags} {rd.tag.decode().lower()} {rd.value.decode(errors='replace')}"
    return rd.to_text().lower()


def kind(rdtype: str, value_key: str) -> str:
    """Values of one kind compete for the same purpose: `v=spf1` vs. another SPF, not vs.
    an unrelated TXT at the same name. Types holding one value per name have one kind."""
    if rdtype == "TXT":
        first = re.split(r"[;\s]", value_key, maxsplit=1)[0].lower()
        return first if first.startswith("v=") else first.split("=")[0]
    if rdtype == "CAA":
        return value_key.split()[1]
    return ""


# RFC 8461 §3.1: the id only tells senders that the policy changed; any valid one is right.
# The deploy keeps the zone's id, but a zone written earlier may hold another one.
_STS_ID = re.compile(r"^(v=STSv1;(?:.*;)?id=)[A-Za-z0-9]{1,32}(?=;|$)", re.IGNORECASE)


def _comparable(rdtype: str, value_key: str) -> str:
    return _STS_ID.sub(r"\1*", value_key) if rdtype == "TXT" else value_key


def expected_key(rdtype: str, value: str) -> str:
    """`key` of a record given in zone-file presentation form (absolute names)."""
    rd = dns.rdata.from_text(dns.rdataclass.IN, rdtype, value, dns.name.root, relativize=False)
    return key(rd)


def compare(rdtype: str, value: str, found: Iterable[dns.rdata.Rdata]) -> tuple[str, str] | None:
    """None when `found` holds the expected record; else (MISSING or WRONG, the competing
    values found, comma-separated; empty when there is none).

    Single-valued types must hold exactly the expected value; for the others (TXT, CAA, SRV)
    the expected value must be among them, and only a value of the same kind beside it
    makes it wrong rather than missing.
    """
    expected = _comparable(rdtype, expected_key(rdtype, value))
    values = {_comparable(rdtype, key(rd)): rd.to_text() for rd in found}
    if rdtype in SINGLE_VALUED:
        if list(values) == [expected]:
            return None
        return (WRONG, ", ".join(values.values())) if values else (MISSING, "")
    if expected in values:
        return None
    same_kind = [v for k, v in values.items() if kind(rdtype, k) == kind(rdtype, expected)]
    if same_kind:
        return WRONG, ", ".join(same_kind)
    return MISSING, ""
