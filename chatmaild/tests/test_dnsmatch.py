"""Comparing served DNS values with the expected record (shared by `cmdeploy dns` and the
relay's daily health check)."""

from __future__ import annotations

import dns.rdata
import dns.rdataclass
import pytest

from chatmaild import dnsmatch


def served(rdtype: str, *values: str) -> list[dns.rdata.Rdata]:
    return [dns.rdata.from_text(dns.rdataclass.IN, rdtype, v) for v in values]


@pytest.mark.parametrize(
    "value",
    ['"v=STSv1; id=202612061014"', '"v=STSv1;id=1"', '"v=STSv1; id=abcDEF123"'],
)
def test_any_valid_mta_sts_id_matches(value: str) -> None:
    # the id is a change marker (RFC 8461 §3.1): the zone may keep one from an earlier deploy
    assert dnsmatch.compare("TXT", '"v=STSv1; id=202612061022"', served("TXT", value)) is None


@pytest.mark.parametrize(
    "value",
    [
        '"v=STSv1; id="',  # no id
        '"v=STSv1; id=has-dash"',  # not alphanumeric
        '"v=STSv1; id=' + "1" * 33 + '"',  # longer than 32
        '"v=STSv2; id=1"',
    ],
)
def test_an_invalid_mta_sts_record_is_still_wrong(value: str) -> None:
    result = dnsmatch.compare("TXT", '"v=STSv1; id=202612061022"', served("TXT", value))
    assert result is not None


def test_other_txt_records_still_compare_exactly() -> None:
    expected = '"v=spf1 a ~all"'
    assert dnsmatch.compare("TXT", expected, served("TXT", '"v=spf1 a -all"')) == (
        dnsmatch.WRONG,
        '"v=spf1 a -all"',
    )
