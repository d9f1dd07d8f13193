"""The replies of the encryption gate (doc/encryption-gate.md §3) as `Reject` exceptions.

A check raises `Reject`; exactly one place, the SMTP/HTTP front end, turns it into the reply
line with `Reject.reply()`. `public` is what the client or peer reads; `private` is the reason
for our logs and never holds an address, subject or body text; `reason` is one fixed word
per constructor, a label value of the gate's metrics. The constructors below are the
only way the texts of §3 are spelled, so the tests can pin each one.
"""

from __future__ import annotations

# An address or header value shown in a reply is cut to this many characters, so that even
# `Invalid FROM <a> for <b>` stays below the 512-octet reply line limit of RFC 5321 §4.5.3.1.5.
_MAX_SHOWN = 200


def _single_line_ascii(text: str) -> str:
    """`text` with anything but printable ASCII replaced: a reply can never be split or smuggled."""
    return "".join(ch if " " <= ch <= "~" else "?" for ch in text)


def _shown(value: str) -> str:
    text = _single_line_ascii(value)
    return text if len(text) <= _MAX_SHOWN else text[:_MAX_SHOWN] + "..."


class Reject(Exception):
    """A message or command the gate refuses, with the SMTP reply that says so."""

    def __init__(
        self, code: int, enhanced: str | None, public: str, private: str, reason: str
    ) -> None:
        super().__init__(private)  # str(exc) is the private reason: safe for logs
        self.code = code
        self.enhanced = enhanced
        self.public = _single_line_ascii(public)
        self.private = private
        self.reason = reason  # a fixed word for the metrics (doc/metrics.md)

    def reply(self) -> str:
        """The reply line, no CRLF: e.g. `523 Encryption Needed: Invalid Unencrypted Mail`."""
        if self.enhanced:
            return f"{self.code} {self.enhanced} {self.public}"
        return f"{self.code} {self.public}"

    def __repr__(self) -> str:
        return f"Reject({self.code}, {self.enhanced!r}, private={self.private!r})"


def invalid_from_address(mail_from: str) -> Reject:
    """Outgoing MAIL FROM that is not one of the relay's addresses in its one spelling (§1.3)."""
    return Reject(
        500,
        None,
        f"Invalid from address <{_shown(mail_from)}>",
        "MAIL FROM not a local address in its one spelling",
        "invalid_sender",
    )


def invalid_recipient(why: str) -> Reject:
    """RCPT TO / X-MAIL-TO in a spelling the gate does not take (§1.3). `why` names the rule."""
    return Reject(
        553, "5.1.3", "Invalid recipient address", f"recipient: {why}", "invalid_recipient"
    )


def too_much_mail(mail_from: str, until: str) -> Reject:
    """Over the outgoing rate limit (doc/contract.md §3.2).

    The reference writes the enhanced code with a colon (`450 4.7.1: Too much...`), which is not
    an RFC 3463 code a client would parse; keeping the reply byte-identical matters more, so the
    code sits in the public text and `enhanced` stays None.
    """
    return Reject(
        450,
        None,
        f"4.7.1: Too much mail from <{_shown(mail_from)}>, rate limited until {_shown(until)}",
        "sender over the rate limit",
        "rate_limited",
    )


def message_too_large() -> Reject:
    """DATA over `max_message_size` (the front end measures, and closes the connection)."""
    return Reject(
        552, None, "Message exceeds maximum size", "message over max_message_size", "too_large"
    )


def parse_failed(why: str) -> Reject:
    """Bytes that are not a message. `why` names the failure, never its content."""
    return Reject(500, None, "Failed to parse message", f"unparsable message: {why}", "unparsable")


def invalid_from_header(why: str) -> Reject:
    """No single address can be taken from the From header.

    The reply names the kind of failure ("missing", "more than one address", ...) instead of
    echoing the header: a header is arbitrary bytes from the sender.
    """
    return Reject(500, None, f"Invalid FROM header: {why}", f"From header: {why}", "invalid_from")


def from_mismatch(from_addr: str, mail_from: str) -> Reject:
    """Outgoing From header address differs from MAIL FROM (ignoring case)."""
    return Reject(
        500,
        None,
        f"Invalid FROM <{_shown(from_addr)}> for <{_shown(mail_from)}>",
        "From header address differs from MAIL FROM",
        "from_mismatch",
    )


def encryption_needed(why: str) -> Reject:
    """Cleartext where it is not allowed (code 523 of RFC 5248)."""
    return Reject(523, None, "Encryption Needed: Invalid Unencrypted Mail", why, "cleartext")


def no_dkim_signature() -> Reject:
    """Incoming mail without any DKIM-Signature header."""
    return Reject(554, "5.7.1", "No DKIM signature found", "no DKIM-Signature header", "no_dkim")


def no_valid_dkim_signature() -> Reject:
    """No DKIM signature that both verifies and aligns with the From domain."""
    return Reject(
        554,
        "5.7.1",
        "No valid DKIM signature found",
        "no valid aligned DKIM signature",
        "invalid_dkim",
    )


def recipient_blocked() -> Reject:
    """A recipient account the operator blocked (doc/accounts.md): permanent, so the sender's
    relay bounces at once instead of retrying. RFC 3463 X.2.1: mailbox disabled, not
    accepting messages."""
    return Reject(
        550,
        "5.2.1",
        "Mailbox disabled, not accepting messages",
        "recipient account is blocked",
        "blocked_recipient",
    )


def internal_error(why: str) -> Reject:
    """The gate could not decide just now (RFC 3463 X.3.0): the client keeps the message and
    tries again, instead of being refused for good or let through unchecked."""
    return Reject(451, "4.3.0", "Internal error, please try again later", why, "internal")


def dkim_key_unavailable() -> Reject:
    """No aligned signature could be verified because the signer's key could not be looked
    up just now (a DNS timeout or server failure): RFC 6376 §6.1.2 calls it a temporary
    failure, so the peer keeps the message and tries again, instead of bouncing it."""
    return Reject(
        451,
        "4.4.3",
        "Temporary failure looking up the DKIM key, try again later",
        "DKIM key lookup failed temporarily",
        "dkim_tempfail",
    )
