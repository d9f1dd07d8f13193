"""Hands accepted mail back to Postfix over SMTP (relay-spec §4.1).

Outgoing mail goes to `postfix_reinject_port` (10025: header cleanup and DKIM signing),
incoming mail to `postfix_reinject_port_incoming` (10026: on to LMTP). Postfix's own reply
is passed through to the client: a refusal there reaches the sender as it was given. A
failure without any reply (Postfix down, connection lost) becomes a 451, so the message is
retried later and never lost.
"""

from __future__ import annotations

import asyncio
import logging
import smtplib
from concurrent.futures import ThreadPoolExecutor

log = logging.getLogger("filtermail")

TIMEOUT = 60.0


def _reply(code: int, message: bytes | str) -> str:
    text = message.decode("utf-8", "replace") if isinstance(message, bytes) else message
    return f"{code} {' '.join(text.split())}"  # one line, whatever Postfix sent


class Reinjector:
    def __init__(self, host: str, port: int, threads: int = 32) -> None:
        self.host = host
        self.port = port
        self._pool = ThreadPoolExecutor(threads, "reinject")

    def send(self, mail_from: str, rcpts: list[str], data: bytes) -> str:
        """Deliver to Postfix; returns the reply line for the client (blocking)."""
        try:
            with smtplib.SMTP(self.host, self.port, timeout=TIMEOUT) as smtp:
                refused = smtp.sendmail(mail_from, rcpts, data)
        except smtplib.SMTPRecipientsRefused as e:
            code, message = next(iter(e.recipients.values()))
            return _reply(code, message)
        except (smtplib.SMTPSenderRefused, smtplib.SMTPDataError) as e:
            return _reply(e.smtp_code, e.smtp_error)
        except smtplib.SMTPResponseException as e:
            return _reply(e.smtp_code, e.smtp_error)
        except (OSError, smtplib.SMTPException) as e:
            log.error("re-injection failed: %s", type(e).__name__)
            return "451 4.3.0 Could not hand the message on, please try again later"
        if refused:
            # Postfix took the message for some recipients only: say so for the rest
            code, message = next(iter(refused.values()))
            log.warning("re-injection refused %d of %d recipients", len(refused), len(rcpts))
            return _reply(code, message)
        return "250 OK"

    async def deliver(self, mail_from: str, rcpts: list[str], data: bytes) -> str:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self.send, mail_from, rcpts, data)
