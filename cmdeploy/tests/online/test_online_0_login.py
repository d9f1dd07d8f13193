"""Accounts, logins, onboarding and where TLS is required."""

from __future__ import annotations

import contextlib
import imaplib
import json
import shlex
import smtplib
import ssl
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import unquote, urlsplit

import pytest
from chatmail_online import (
    EHLO_NAME,
    NET_TIMEOUT,
    Credentials,
    Factory,
    Registry,
    Relay,
    close_smtp,
    imap_connect,
    post_new,
    random_local,
    random_password,
    smtps_connect,
    starttls_connect,
)

pytestmark = pytest.mark.timeout(180)


def password_hash(relay: Relay, addr: str) -> str:
    path = shlex.quote(f"{relay.mailbox_dir(addr)}/password")
    return relay.ssh(f"sha256sum {path}").split()[0]


def test_new_returns_credentials_in_the_domain(relay1: Relay, registry: Registry) -> None:
    config = relay1.config
    status, headers, body = post_new(relay1)
    assert status == 200
    assert headers["Content-Type"].startswith("application/json")
    assert headers["Cache-Control"] == "no-store"
    data = json.loads(body)
    registry.add(Credentials(data["email"], data["password"], relay1))
    expected = {"email", "password"} | ({"dclogin_url"} if config.tls_mode == "self" else set())
    assert set(data) == expected
    local, _, domain = data["email"].partition("@")
    assert domain == config.address_domain
    assert config.username_min_length <= len(local) <= config.username_max_length
    assert local.isascii() and local.isalnum() and local.lower() == local
    assert len(data["password"]) >= config.password_min_length + 3
    if config.tls_mode == "self":
        url = urlsplit(data["dclogin_url"])
        assert url.scheme == "dclogin"
        assert unquote(url.path) == data["email"]
        query = dict(part.split("=", 1) for part in url.query.split("&"))
        assert unquote(query["p"]) == data["password"]
        assert query["v"] == "1" and query["ic"] == "3"
    # a second call hands out other credentials
    _, _, body2 = post_new(relay1)
    other = json.loads(body2)
    registry.add(Credentials(other["email"], other["password"], relay1))
    assert other["email"] != data["email"] and other["password"] != data["password"]


def test_capabilities_before_and_after_login(relay1: Relay, new_credentials: Factory) -> None:
    conn = imap_connect(relay1)
    try:
        assert {"XCHATMAIL", "XDELTAPUSH"} <= set(conn.capabilities)
        creds = new_credentials(relay1)
        conn.login(creds.addr, creds.password)
        typ, data = conn.capability()
        assert typ == "OK"
        assert {b"XCHATMAIL", b"XDELTAPUSH"} <= set(data[0].upper().split())
    finally:
        conn.logout()


def test_first_login_creates_then_password_is_checked(
    relay1: Relay, new_credentials: Factory
) -> None:
    creds = new_credentials(relay1)
    home = relay1.mailbox_dir(creds.addr)
    assert not relay1.exists(home), "the account exists before its first login"
    with creds.imap() as conn:
        assert conn.select("INBOX")[0] == "OK"
    assert relay1.exists(f"{home}/password")
    assert relay1.exists(f"{home}/enforceE2EEincoming")
    stored = password_hash(relay1, creds.addr)
    with creds.imap():  # a second login works
        pass
    with creds.smtp():  # and SMTP knows the account too
        pass

    conn = imap_connect(relay1)
    try:
        with pytest.raises(imaplib.IMAP4.error):
            conn.login(creds.addr, creds.password + "x")
    finally:
        conn.shutdown()
    smtp = smtps_connect(relay1)
    try:
        with pytest.raises(smtplib.SMTPAuthenticationError):
            smtp.login(creds.addr, "wrong-" + creds.password)
    finally:
        close_smtp(smtp)
    assert password_hash(relay1, creds.addr) == stored, "a wrong password changed the account"


def test_smtp_login_creates_an_account(relay1: Relay, new_credentials: Factory) -> None:
    creds = new_credentials(relay1)
    conn = starttls_connect(relay1, 587)
    try:
        conn.login(creds.addr, creds.password)
    finally:
        close_smtp(conn)
    assert relay1.exists(f"{relay1.mailbox_dir(creds.addr)}/password")
    with creds.imap():
        pass


def test_short_password_refused(relay1: Relay, registry: Registry) -> None:
    addr = f"{random_local(relay1)}@{relay1.address_domain}"
    registry.add_address(addr, relay1)
    short = "admin"
    assert len(short) < relay1.config.password_min_length
    conn = imap_connect(relay1)
    try:
        with pytest.raises(imaplib.IMAP4.error):
            conn.login(addr, short)
    finally:
        conn.shutdown()
    smtp = smtps_connect(relay1)
    try:
        with pytest.raises(smtplib.SMTPAuthenticationError):
            smtp.login(addr, short)
    finally:
        close_smtp(smtp)
    assert not relay1.exists(relay1.mailbox_dir(addr))


@pytest.mark.parametrize(
    "kind", ["local part too short", "local part too long", "plus", "slash", "other domain"]
)
def test_creation_rules(kind: str, relay1: Relay, registry: Registry) -> None:
    """Logins that may not create an account fail and leave nothing."""
    local = random_local(relay1)
    addr = {
        "local part too short": f"{local[: relay1.config.username_min_length - 1]}",
        "local part too long": f"{local}x",
        "plus": f"{local[:-1]}+",
        "slash": f"a/{local[:-2]}",
        "other domain": f"{local}@example.org",
    }[kind]
    if "@" not in addr:
        addr = f"{addr}@{relay1.address_domain}"
        registry.add_address(addr, relay1)
    conn = imap_connect(relay1)
    try:
        with pytest.raises(imaplib.IMAP4.error):
            conn.login(addr, random_password(relay1))
    finally:
        conn.shutdown()
    if "/" not in addr:
        assert not relay1.exists(relay1.mailbox_dir(addr))


def test_two_users_may_share_a_password(relay1: Relay, registry: Registry) -> None:
    password = random_password(relay1)
    for _ in range(2):
        addr = f"{random_local(relay1)}@{relay1.address_domain}"
        creds = registry.add(Credentials(addr, password, relay1))
        with creds.imap():
            pass


def test_concurrent_logins(relay1: Relay, new_credentials: Factory) -> None:
    accounts = [new_credentials(relay1) for _ in range(10)]

    def login_both(creds: Credentials) -> None:
        with creds.smtp(), creds.imap() as conn:
            assert conn.select("INBOX")[0] == "OK"

    with ThreadPoolExecutor(max_workers=10) as pool:
        list(pool.map(login_both, accounts))


def test_imap_143_requires_starttls(relay1: Relay, make_account: Factory) -> None:
    creds = make_account(relay1)
    conn = imaplib.IMAP4(relay1.domain, 143, timeout=NET_TIMEOUT)
    try:
        assert "LOGINDISABLED" in conn.capabilities
        with pytest.raises(imaplib.IMAP4.error):
            conn.login(creds.addr, creds.password)
    finally:
        conn.shutdown()
    conn = imaplib.IMAP4(relay1.domain, 143, timeout=NET_TIMEOUT)
    try:
        conn.starttls(ssl_context=relay1.tls_context())
        assert conn.login(creds.addr, creds.password)[0] == "OK"
    finally:
        conn.logout()


def test_submission_587_offers_auth_only_after_starttls(relay1: Relay) -> None:
    conn = smtplib.SMTP(relay1.domain, 587, local_hostname=EHLO_NAME, timeout=NET_TIMEOUT)
    try:
        conn.ehlo()
        assert conn.has_extn("starttls")
        assert not conn.has_extn("auth")
        conn.starttls(context=relay1.tls_context())
        conn.ehlo()
        assert "PLAIN" in conn.esmtp_features["auth"].upper()
    finally:
        close_smtp(conn)


def test_port_25_requires_starttls_before_mail(relay1: Relay) -> None:
    conn = smtplib.SMTP(relay1.domain, 25, local_hostname=EHLO_NAME, timeout=NET_TIMEOUT)
    try:
        conn.ehlo()
        assert conn.has_extn("starttls")
        code, text = conn.mail("someone@example.test")
        assert code == 530 and b"STARTTLS" in text, (code, text)
    finally:
        close_smtp(conn)


def _tls12_only(relay: Relay) -> ssl.SSLContext:
    ctx = relay.tls_context()
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def _handshake_tls12(relay: Relay, port: int) -> None:
    """Connect to `port` offering at most TLS 1.2 (STARTTLS on 587 and 143)."""
    ctx = _tls12_only(relay)
    conn: smtplib.SMTP | imaplib.IMAP4 | None = None
    try:
        if port == 465:
            conn = smtplib.SMTP_SSL(relay.domain, port, context=ctx, timeout=NET_TIMEOUT)
        elif port == 587:
            conn = smtplib.SMTP(relay.domain, port, timeout=NET_TIMEOUT)
            conn.ehlo()
            conn.starttls(context=ctx)
        elif port == 993:
            conn = imaplib.IMAP4_SSL(relay.domain, port, ssl_context=ctx, timeout=NET_TIMEOUT)
        else:
            conn = imaplib.IMAP4(relay.domain, port, timeout=NET_TIMEOUT)
            conn.starttls(ssl_context=ctx)
    finally:
        if conn is not None:
            with contextlib.suppress(OSError):
                if isinstance(conn, smtplib.SMTP):
                    conn.close()
                else:
                    conn.shutdown()


@pytest.mark.parametrize("port", [465, 587, 993, 143])
def test_client_ports_require_tls13(relay1: Relay, port: int) -> None:
    """Submission and IMAP refuse TLS 1.2 (TLS >= 1.3)."""
    with pytest.raises(ssl.SSLError):
        _handshake_tls12(relay1, port)


def test_port_25_accepts_tls12(relay1: Relay) -> None:
    """Peers may use TLS 1.2 on port 25."""
    conn = smtplib.SMTP(relay1.domain, 25, local_hostname=EHLO_NAME, timeout=NET_TIMEOUT)
    try:
        conn.ehlo()
        assert conn.starttls(context=_tls12_only(relay1))[0] == 220
        assert conn.ehlo()[0] == 250
    finally:
        close_smtp(conn)


def test_vrfy_leaks_nothing(relay1: Relay, make_account: Factory) -> None:
    existing = make_account(relay1).addr
    missing = f"{random_local(relay1)}@{relay1.address_domain}"
    conn = starttls_connect(relay1, 25)
    try:
        answers = {}
        for addr in (existing, missing):
            code, text = conn.verify(addr)
            answers[addr] = (code, text.decode().replace(addr, "<addr>"))
    finally:
        close_smtp(conn)
    assert answers[existing] == answers[missing]
    assert answers[existing][0] == 252 and answers[existing][1].startswith("2.0.0")
