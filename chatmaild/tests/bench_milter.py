"""The gate as a milter, for bench_postfix.py's `milter` variant (doc/milter.md).

`chatmaild.milter` serving the incoming gate's own checks: the envelope addresses in their
one spelling (`AddressPolicy`) and `mailcheck.check_incoming`, every recipient enforcing
encryption. What it leaves out is the DKIM origin check (the bench's sender is an address
literal, which has none) and the re-injection, which a milter no longer needs: an accepted
message is queued by Postfix itself.

`python3 bench_milter.py INI LISTEN`: serves until killed, on the UNIX socket LISTEN (a path,
mode 0666 so that Postfix's smtpd reaches it) or on 127.0.0.1:LISTEN (a port number).
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from chatmaild import mailcheck
from chatmaild.addresses import AddressPolicy
from chatmaild.config import read_config
from chatmaild.milter import start_milter_server


class IncomingChecks:
    def __init__(self, address_domain: str) -> None:
        self.addresses = AddressPolicy(address_domain)

    def check_sender(self, mail_from: str) -> str:
        return self.addresses.incoming_sender(mail_from)

    def check_recipient(self, rcpt: str) -> str:
        return self.addresses.incoming_recipient(rcpt)

    async def judge(self, mail_from: str, rcpts: list[str], message: bytes, as_given: bool) -> None:
        mailcheck.check_incoming(mail_from, rcpts, message, lambda rcpt: True)


async def serve(ini: str, listen: str) -> None:
    config = read_config(ini)
    gate = IncomingChecks(config.address_domain)
    size = config.inner_message_size_limit
    address = ("127.0.0.1", int(listen)) if listen.isdigit() else listen
    server = await start_milter_server(gate, address, size)
    if isinstance(address, str):
        Path(address).chmod(0o666)  # Postfix's smtpd connects as the postfix user
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(serve(sys.argv[1], sys.argv[2]))
