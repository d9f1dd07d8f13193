"""filtermail transport: mail to other relays leaves over HTTPS first (doc/transport.md).

Postfix delivers every message for another domain over LMTP to this listener
(`filtermail_lmtp_port_transport`), and keeps it queued until the reply for its recipient
says what became of it. For each recipient domain:

1. the peer is the first host of the domain's MX records (the domain itself without any,
   the address of an IP literal);
2. unless that host was found lately not to offer `/mxdeliv`, the message is POSTed to
   `https://<host>/mxdeliv` (`mxclient`) and the peer's answer is the reply: delivered, or
   its gate's SMTP refusal, permanent or temporary, which Postfix then bounces or retries;
3. otherwise, and whenever the peer does not answer `/mxdeliv` in kind (no connection, TLS
   failure, 404, an HTTP 5xx from a relay whose filter is down), the message is handed back
   to Postfix on `postfix_reinject_port_smtp`, from where Postfix's own SMTP client delivers
   it (STARTTLS, its TLS policy, MX fallbacks, retries and bounces). A host that did not
   answer or does not offer `/mxdeliv` goes straight to SMTP for `NO_MXDELIV_FOR` seconds.

Nothing is lost when this process dies: Postfix removes a recipient from its queue only
after a 2xx for it. What can happen is a second copy (the peer took it, the reply did not
reach Postfix), which mail allows and Delta Chat drops by its Message-ID.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable

import dns.exception
import dns.resolver

from .addresses import ip_literal, parse_mailbox
from .metrics import Registry
from .mxclient import Answer, MxdelivClient, NoAnswer
from .reinject import Reinjector
from .smtpreject import invalid_recipient

log = logging.getLogger("filtermail")

NO_MXDELIV_FOR = 1800.0  # seconds: how long a peer without /mxdeliv is sent mail by SMTP
DNS_TIMEOUT = 10.0
DELIVERED = "250 2.0.0 Delivered over HTTPS"
_SMTP_REPLY = re.compile(r"[245][0-9][0-9] ")

ResolveMx = Callable[[str], Awaitable[str | None]]


def verdict(answer: Answer) -> str | None:
    """The SMTP reply a peer's `/mxdeliv` answer stands for; None when the peer did not
    answer as a relay's `/mxdeliv` does (then SMTP is tried)."""
    if answer.status == 200 and answer.text.startswith("2"):
        return DELIVERED
    if answer.status in (400, 413) and _SMTP_REPLY.match(answer.text):
        return answer.text  # the peer's gate refused, permanently (5xx) or not yet (4xx)
    return None


async def resolve_mx(domain: str) -> str | None:
    """The most preferred MX host of `domain`, the domain itself if it has no MX record, the
    IP literal as it is; None for a null MX or when DNS does not answer (SMTP then decides)."""
    if ip_literal(domain) is not None:
        return domain

    def lookup() -> str | None:
        try:
            answer = dns.resolver.resolve(domain, "MX", lifetime=DNS_TIMEOUT, search=False)
        except dns.resolver.NoAnswer:
            return domain
        except (dns.exception.DNSException, ValueError):
            return None
        records = sorted(answer, key=lambda r: (r.preference, str(r.exchange)))
        host = str(records[0].exchange).rstrip(".").lower() if records else ""
        return host or None  # "." is the null MX (RFC 7505)

    return await asyncio.to_thread(lookup)


class Transport:
    """The gate of the LMTP listener: nothing to judge, only where each message goes."""

    def __init__(
        self,
        client: MxdelivClient,
        fallback: Reinjector,
        resolve: ResolveMx = resolve_mx,
        clock: Callable[[], float] = time.monotonic,
        registry: Registry | None = None,
    ) -> None:
        registry = registry or Registry()
        self.deliveries = registry.counter(
            "chatmail_transport_deliveries_total",
            "Messages for other relays, per recipient domain, by route (https: the peer's "
            "/mxdeliv answered; smtp: handed to Postfix to send) and result (delivered, "
            "queued for SMTP, deferred: 4xx, refused: 5xx).",
            ("route", "result"),
        )
        self.https_failures = registry.counter(
            "chatmail_transport_https_failures_total",
            "Attempts over HTTPS that fell back to SMTP, by reason (unreachable: no "
            "answer; not_mxdeliv: an answer that is not a relay's /mxdeliv).",
            ("reason",),
        )
        self.client = client
        self.fallback = fallback
        self.resolve = resolve
        self.clock = clock
        self._no_mxdeliv: dict[str, float] = {}  # host -> until when

    def check_sender(self, mail_from: str) -> str:
        return mail_from  # judged by the outgoing gate already, or Postfix's own <>

    def check_recipient(self, rcpt: str) -> str:
        if parse_mailbox(rcpt) is None:  # it becomes an HTTP header and an SMTP command
            raise invalid_recipient("transport recipient not in the one syntax")
        return rcpt

    async def deliver(self, mail_from: str, rcpts: list[str], data: bytes) -> str:
        """One reply per recipient, joined by CRLF (LMTP)."""
        by_domain: dict[str, list[str]] = {}
        for rcpt in rcpts:
            by_domain.setdefault(rcpt.rpartition("@")[2].lower(), []).append(rcpt)
        replies: dict[str, str] = {}
        results = await asyncio.gather(
            *(
                self._deliver_to(domain, mail_from, group, data)
                for domain, group in by_domain.items()
            )
        )
        for group, reply in zip(by_domain.values(), results, strict=True):
            replies.update(dict.fromkeys(group, reply))
        return "\r\n".join(replies[rcpt] for rcpt in rcpts)

    async def _deliver_to(self, domain: str, mail_from: str, rcpts: list[str], data: bytes) -> str:
        host = await self.resolve(domain)
        if host is not None and self._no_mxdeliv.get(host, 0.0) <= self.clock():
            try:
                answer = await self.client.post(host, mail_from, rcpts, data)
            except NoAnswer as e:
                log.info("peer unreachable over HTTPS (%s): SMTP for a while", e)
                self.https_failures.inc(reason="unreachable")
                self._no_mxdeliv[host] = self.clock() + NO_MXDELIV_FOR
            else:
                reply = verdict(answer)
                if reply is not None:
                    # 250, or the peer's gate's refusal (4xx, 5xx): not "delivered" then
                    log.info("answered over HTTPS: %s", reply[:3])
                    self.deliveries.inc(route="https", result=_result(reply, "delivered"))
                    return reply
                if answer.status < 500:  # 404, 405, ...: no /mxdeliv there
                    self._no_mxdeliv[host] = self.clock() + NO_MXDELIV_FOR
                log.info("peer answered HTTP %d, not as /mxdeliv: SMTP", answer.status)
                self.https_failures.inc(reason="not_mxdeliv")
        reply = await self.fallback.deliver(mail_from, rcpts, data)
        log.info("handed to Postfix for SMTP: %s", reply[:3])
        self.deliveries.inc(route="smtp", result=_result(reply, "queued"))
        return reply


def _result(reply: str, success: str) -> str:
    """The metric's result for an SMTP reply: `success` for 2xx, deferred, refused."""
    return {"2": success, "4": "deferred"}.get(reply[:1], "refused")
