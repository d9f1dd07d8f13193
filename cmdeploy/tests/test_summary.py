"""The closing summary of `cmdeploy run`, read from pyinfra's own tables."""

from __future__ import annotations

from cmdeploy.summary import Left, parse_outcome, summary

FIRST_RUN = """\
--> Results:
    Operation                                                    Hosts   Success   Error   No Change
    Install /etc/postfix/main.cf                                 1       1         -       -
    Install /etc/dovecot/dovecot.conf                            1       -         -       1
    Restart postfix                                              1       1         -       -
    Restart dovecot                                              1       -         -       1
    Request the certificate (ACME)                               1       1         -       -
    Grand total                                                  5       3         -       2
"""

SECOND_RUN = """\
    Operation                                                    Hosts   Success   Error   No Change
    Install /etc/postfix/main.cf                                 1       -         -       1
    Restart postfix                                              1       -         -       1
    Grand total                                                  2       -         -       2
"""


def test_what_changed_and_what_restarted() -> None:
    outcome = parse_outcome(FIRST_RUN.splitlines())
    assert outcome.operations == 5
    assert outcome.files == ["/etc/postfix/main.cf"]
    assert outcome.restarted == ["postfix"]
    left = Left(certificate_pending=True, dns_missing=3, not_running=["chatmail-postlog"])
    text = summary("chat.example.org", outcome, left)
    assert "changed: 1 files, 2 other operations" in text
    assert "restarted: postfix" in text
    assert "certificate is pending" in text
    assert "3 required DNS record(s) missing" in text
    assert "not running: chatmail-postlog" in text


def test_a_second_run_has_nothing_to_say() -> None:
    outcome = parse_outcome(SECOND_RUN.splitlines())
    text = summary("chat.example.org", outcome, Left(False, 0, []))
    assert "nothing changed (2 operations checked)" in text
    assert "restarted: nothing" in text
    assert "next: nothing; the relay is ready." in text


def test_unknown_dns_is_not_called_ready() -> None:
    outcome = parse_outcome(SECOND_RUN.splitlines())
    text = summary("chat.example.org", outcome, Left(False, None, []))
    assert "cmdeploy dns" in text and "ready" not in text


def test_the_summary_names_the_hosts_release() -> None:
    text = summary(
        "chat.example.org",
        parse_outcome([]),
        Left(certificate_pending=False, dns_missing=0, not_running=[]),
        "Debian 13 (trixie)",
    )
    assert text.splitlines()[0] == "Summary for chat.example.org on Debian 13 (trixie):"
