"""TLS as peers and apps meet it on an ACME relay (doc/config.md, RFC 7301).

Every listener presents the certificate the relay obtained from its ACME CA (the lab's pebble,
or Let's Encrypt), valid for `<d>`, `www.<d>` and `mta-sts.<d>`, and verified against the
target's CA bundle with the relay's name, as a peer relay or the app verifies it. Self-signed
relays are skipped here (their certificate is checked by nobody, by design).
"""

from __future__ import annotations

import http.client
import imaplib
import smtplib
import socket
import ssl

import pytest
from chatmail_online import EHLO_NAME, NET_TIMEOUT, Relay

pytestmark = pytest.mark.timeout(120)


def acme_relays(relays: list[Relay]) -> list[Relay]:
    found = [r for r in relays if r.config.tls_mode == "acme"]
    if not found:
        pytest.skip("no ACME relay in the target")
    return found


def names_in(cert: dict) -> set[str]:  # type: ignore[type-arg]
    return {value for kind, value in cert.get("subjectAltName", ()) if kind == "DNS"}


def test_every_listener_presents_the_acme_certificate(relays: list[Relay]) -> None:
    for relay in acme_relays(relays):
        ctx = relay.tls_context()  # verifies chain and name
        seen = []
        # implicit TLS: IMAPS, SMTPS, and 443 with each ALPN the multiplexer knows
        for port, alpn in ((993, None), (465, None), (443, "imap"), (443, "smtp"), (443, None)):
            if alpn:
                ctx.set_alpn_protocols([alpn])
            with (
                socket.create_connection((relay.domain, port), timeout=NET_TIMEOUT) as raw,
                ctx.wrap_socket(raw, server_hostname=relay.domain) as tls,
            ):
                seen.append(names_in(tls.getpeercert()))
            ctx = relay.tls_context()
        # STARTTLS: SMTP on 25 and 587, IMAP on 143
        for port in (25, 587):
            with smtplib.SMTP(
                relay.domain, port, local_hostname=EHLO_NAME, timeout=NET_TIMEOUT
            ) as smtp:
                smtp.starttls(context=relay.tls_context())
                assert isinstance(smtp.sock, ssl.SSLSocket)
                seen.append(names_in(smtp.sock.getpeercert()))
        imap = imaplib.IMAP4(relay.domain, 143, timeout=NET_TIMEOUT)
        try:
            imap.starttls(ssl_context=relay.tls_context())
            seen.append(names_in(imap.sock.getpeercert()))  # type: ignore[attr-defined]
        finally:
            imap.logout()
        expected = {relay.domain, f"www.{relay.domain}", f"mta-sts.{relay.domain}"}
        assert seen == [expected] * len(seen), seen


def https(relay: Relay, host: str, path: str) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPSConnection(host, 443, timeout=NET_TIMEOUT, context=relay.tls_context())
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, dict(response.headers), response.read()
    finally:
        conn.close()


def test_sub_names_answer_with_a_valid_certificate(relays: list[Relay]) -> None:
    for relay in acme_relays(relays):
        status, headers, _ = https(relay, f"www.{relay.domain}", "/")
        assert status == 301 and headers["Location"] == f"https://{relay.domain}/"
        status, _, body = https(relay, f"mta-sts.{relay.domain}", "/.well-known/mta-sts.txt")
        assert status == 200
        assert f"mx: {relay.domain}" in body.decode() and "mode: enforce" in body.decode()


def test_new_on_get_sends_the_app_to_dcaccount(relays: list[Relay]) -> None:
    """A browser (or a scanned link) GETting /new is sent to the app (doc/contract.md §8.2)."""
    for relay in acme_relays(relays):
        status, headers, _ = https(relay, relay.domain, "/new")
        assert status == 301
        assert headers["Location"] == f"DCACCOUNT:https://{relay.domain}/new"
