"""Run a dict service's asyncio server in a background thread, for blocking test clients."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path

from chatmaild.dictserver import DictBackend, serve


@contextlib.contextmanager
def serving(socket_path: Path, backend: DictBackend) -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    ready = threading.Event()
    service = serve(socket_path, backend, stop, on_ready=ready.set)
    thread = threading.Thread(target=loop.run_until_complete, args=(service,), daemon=True)
    thread.start()
    assert ready.wait(10), "dict server did not start"
    try:
        yield loop
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(10)
        loop.close()
