"""The message size limit, announced where clients read it (doc/message-size.md).

Every relay of the target says `max_message_size` from its deployed chatmail.ini: as SMTP
SIZE (RFC 1870) in the EHLO reply of ports 25, 587 and 465, and as IMAP APPENDLIMIT=<n>
(RFC 7889 §2) before and after login.
"""

from __future__ import annotations

import pytest
from chatmail_online import (
    Factory,
    Relay,
    close_smtp,
    imap_connect,
    smtps_connect,
    starttls_connect,
)

pytestmark = pytest.mark.timeout(120)


def test_smtp_announces_max_message_size(relays: list[Relay]) -> None:
    for relay in relays:
        expected = str(relay.config.max_message_size)
        for port in (25, 587, 465):
            conn = smtps_connect(relay) if port == 465 else starttls_connect(relay, port)
            try:
                assert conn.esmtp_features.get("size") == expected, (relay, port)
            finally:
                close_smtp(conn)


def test_imap_announces_appendlimit(relays: list[Relay], make_account: Factory) -> None:
    for relay in relays:
        expected = f"APPENDLIMIT={relay.config.max_message_size}"
        conn = imap_connect(relay)
        try:
            assert expected in conn.capabilities, (relay, conn.capabilities)
        finally:
            conn.logout()
        with make_account(relay).imap() as conn:
            typ, data = conn.capability()
            assert typ == "OK" and expected in data[0].decode().split(), (relay, data)
