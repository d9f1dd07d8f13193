"""A milter that takes every message, for bench_postfix.py's `milter` variant.

Issue #13 weighs running the gate as a milter in Postfix's smtpd instead of as a
before-queue proxy filter. What that design would cost is the Postfix side of the milter
protocol plus a process that receives each message's envelope, headers and body; this is
that process with no verdict at all (the gate's own checks are a small, separately measured
part of filtermail's time, doc/performance.md). It asks for what a gate needs: MAIL, RCPT,
every header with its leading space, the body, and a reply only at the end of the message
(milter protocol version 6, the "no reply" flags for everything before).

`python3 bench_milter.py PORT`: listens on 127.0.0.1:PORT until killed. Loopback only.
"""

from __future__ import annotations

import asyncio
import struct
import sys

VERSION = 6
NOCONNECT, NOHELO, NOUNKNOWN, NODATA = 0x01, 0x02, 0x100, 0x200
NR_HDR, NR_MAIL, NR_RCPT, NR_EOH, NR_BODY = 0x80, 0x4000, 0x8000, 0x40000, 0x80000
HDR_LEADSPC = 0x100000
WANTED = (
    NOCONNECT | NOHELO | NOUNKNOWN | NODATA | NR_HDR | NR_MAIL | NR_RCPT | NR_EOH | NR_BODY
) | HDR_LEADSPC
# commands that get no reply: macros, abort, and those the negotiation made silent
SILENT = set(b"DAMRLNBK")


def packet(command: bytes, data: bytes = b"") -> bytes:
    return struct.pack(">I", len(command) + len(data)) + command + data


async def session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    body = 0  # what a gate would hold: the message's size stands for its bytes here
    try:
        while True:
            (length,) = struct.unpack(">I", await reader.readexactly(4))
            data = await reader.readexactly(length)
            command, rest = data[:1], data[1:]
            if command == b"O":
                offered = struct.unpack(">III", rest[:12])[2]  # version, actions, protocol
                writer.write(packet(b"O", struct.pack(">III", VERSION, 0, WANTED & offered)))
            elif command == b"B":
                body += len(rest)
            elif command == b"E":
                body = 0
                writer.write(packet(b"c"))
            elif command == b"Q":
                return
            elif command[0] not in SILENT:
                writer.write(packet(b"c"))
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        return
    finally:
        writer.close()


async def serve(port: int) -> None:
    server = await asyncio.start_server(session, "127.0.0.1", port)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(serve(int(sys.argv[1])))
