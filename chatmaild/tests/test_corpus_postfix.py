"""The gate's corpus (data/mail/verdicts.toml) through the real submission path: Postfix's
submission listener with the real `filtermail outgoing` as its milter (doc/milter.md), and
Dovecot behind it (postfix_harness.running_submission).

The gate decides on what Postfix hands it, and Postfix acts on the answer; the two must read
each message the same way. For every corpus message the relay's own users could send, a
client of the real Postfix (from an address outside `mynetworks`, as every real client is)
gets exactly the verdict that `check_outgoing` gives on the bytes it sent: the same reply
line for a refusal, and for an acceptance a `250` and the message in each recipient's
mailbox. The exceptions are named in POSTFIX_CHANGES: messages that Postfix changes before the
gate reads them, most into ones the gate accepts. Whatever is delivered is a message the gate
accepts when it reads the stored bytes itself. The bytes go out as they are, bare line
ends included (smtplib would change them), dot-stuffed, and with a CRLF added where they do
not end in one (Postfix takes only <CRLF>.<CRLF> as the end of the data).
"""

from __future__ import annotations

import secrets
import smtplib
import tomllib
from pathlib import Path
from typing import Any

import pytest
from postfix_harness import (
    LISTEN_ADDRESS,
    PEER_ADDRESS,
    Submission,
    unverified_tls,
)
from test_postfix_gate import PASSWORD, imap

from chatmaild import smtpreject
from chatmaild.mailcheck import check_outgoing
from chatmaild.smtpreject import Reject

pytestmark = pytest.mark.dovecot

CORPUS = Path(__file__).parent / "data" / "mail"
MANIFEST = tomllib.loads((CORPUS / "verdicts.toml").read_text(encoding="utf-8"))
# the corpus's users, each replaced by a fresh account of the test relay
USERS = ("alice@example.org", "bob@example.org", "carol@example.org")


def _sendable(case: dict[str, Any]) -> bool:
    """Whether a user of the relay can send the case as written: the corpus's own sender, to
    recipients among its users in their one spelling (the other envelopes are what Postfix's
    own restrictions refuse before the gate: test_submission_postfix, test_postfix_gate)."""
    defaults = MANIFEST["defaults"]
    mail_from = case.get("mail_from", defaults["mail_from"])
    rcpts = case.get("rcpts", defaults["rcpts"])
    return "outgoing" in case and mail_from == USERS[0] and set(rcpts) <= set(USERS)


CASES = [case for case in MANIFEST["case"] if _sendable(case)]

# What Postfix changes before the gate reads the message (doc/milter.md §2), with the verdict
# on the changed message: the gate judges and Postfix delivers that one.
LF_ENDS = "smtpd_forbid_bare_newline = normalize: the LF line ends become CRLF"
SUBJECT_RULE = "the Subject rule (doc/contract.md §5.1) replaces the whole line"
CLEARTEXT = smtpreject.encryption_needed("").reply()
POSTFIX_CHANGES = {
    "enc-lf-only": ("accept", LF_ENDS),
    "armor-lf-only": ("accept", LF_ENDS),
    "cleartext-lf-only": (CLEARTEXT, LF_ENDS),
    "shape-obsolete-colon": ("accept", "cleanup queues `Content-Type :` as `Content-Type:`"),
    "shape-bare-cr-in-header": ("accept", f"the bare CR is in the Subject: {SUBJECT_RULE}"),
    "shape-nul-in-header": ("accept", f"the NUL is in the Subject: {SUBJECT_RULE}"),
}
DELIVERY_HEADERS = (b"Return-Path:", b"Delivered-To:")  # what Dovecot's LMTP puts in front
# The Setup Message's Subject, by which the gate knows it, is replaced before Dovecot stores
# it (doc/contract.md §5.1): the stored copy is one the gate would not take from a client.
SETUP_MESSAGES = {"asm-self"}


def stuffed(data: bytes) -> bytes:
    """`data` as the DATA command carries it (RFC 5321 §4.5.2), line ends left as they are."""
    if data.startswith(b"."):
        data = b"." + data
    data = data.replace(b"\n.", b"\n..")
    if not data.endswith(b"\r\n"):  # Postfix takes only <CRLF>.<CRLF> as the end
        data += b"\r\n"
    return data + b".\r\n"


def submit_raw(submission: Submission, sender: str, rcpts: list[str], data: bytes) -> str:
    """ "accept" for a `250` after the message, else the refusal as "code text"."""
    with smtplib.SMTP(
        LISTEN_ADDRESS, submission.port, timeout=30, source_address=(PEER_ADDRESS, 0)
    ) as smtp:
        smtp.starttls(context=unverified_tls())
        smtp.login(sender, PASSWORD)
        for code, text in [smtp.mail(sender), *(smtp.rcpt(rcpt) for rcpt in rcpts)]:
            if code != 250:
                return f"{code} {text.decode()}"
        code, text = smtp.docmd("DATA")
        assert code == 354, text
        smtp.send(stuffed(data))
        code, text = smtp.getreply()
        return "accept" if code == 250 else f"{code} {text.decode()}"


def stored(submission: Submission, addr: str) -> list[bytes]:
    """The messages in the account's INBOX, without the headers of the delivery."""
    with imap(submission.postfix, addr) as conn:
        typ, data = conn.select("INBOX", readonly=True)
        assert typ == "OK"
        messages = []
        for num in range(1, int(data[0]) + 1):
            typ, fetched = conn.fetch(str(num), "(BODY.PEEK[])")
            assert typ == "OK" and isinstance(fetched[0], tuple)
            raw = fetched[0][1]
            while raw.startswith(DELIVERY_HEADERS):
                raw = raw.split(b"\r\n", 1)[1]
            messages.append(raw)
        return messages


def test_the_corpus_has_cases_for_the_submission_path() -> None:
    verdicts = [case["outgoing"] for case in CASES]
    assert len(CASES) >= 100 and "accept" in verdicts and 523 in verdicts
    assert set(POSTFIX_CHANGES) | SETUP_MESSAGES <= {case["name"] for case in CASES}


@pytest.mark.parametrize("case", CASES, ids=[case["name"] for case in CASES])
def test_a_client_of_postfix_gets_the_gates_verdict(
    submission: Submission, case: dict[str, Any]
) -> None:
    accounts = {}
    for user in USERS:  # fresh accounts: a sender's rate limit, and empty mailboxes
        accounts[user] = f"c{secrets.token_hex(4)}@{submission.postfix.domain}"
        with imap(submission.postfix, accounts[user]):
            pass  # the first login creates the account
    data = (CORPUS / case["file"]).read_bytes()
    for user, account in accounts.items():  # in the spelling the corpus uses
        data = data.replace(user.encode(), account.encode())
        data = data.replace(user.upper().encode(), account.upper().encode())
    sender = accounts[USERS[0]]
    rcpts = [accounts[rcpt] for rcpt in case.get("rcpts", MANIFEST["defaults"]["rcpts"])]

    try:
        check_outgoing(sender, rcpts, data)
        decided = "accept"
    except Reject as e:
        decided = e.reply()
    # the accounts in place of the corpus's users change nothing the gate reads
    assert (decided if decided == "accept" else int(decided[:3])) == case["outgoing"]

    expected = decided
    if case["name"] in POSTFIX_CHANGES:
        expected = POSTFIX_CHANGES[case["name"]][0]
        assert expected != decided, "Postfix no longer changes it: drop it from the list"
    assert submit_raw(submission, sender, rcpts, data) == expected, case["about"]
    submission.postfix.wait_queue_settled()
    for rcpt in rcpts:
        messages = stored(submission, rcpt)
        assert len(messages) == (1 if expected == "accept" else 0)
        for message in messages:  # what was delivered is what the gate accepts
            if case["name"] not in SETUP_MESSAGES:
                check_outgoing(sender, rcpts, message)
