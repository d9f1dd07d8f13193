"""What every chatmaild service does at start: log to stderr (journald), load the config."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import NoReturn

from .config import Config, ConfigError, read_config


def setup_logging(verbose: bool = False) -> None:
    # No timestamps: journald adds them. No addresses, passwords or tokens in any message.
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(name)s: %(levelname)s: %(message)s",
    )


def fail(message: str, code: int = 2) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(code)


def load_config_or_exit(path: Path) -> Config:
    try:
        return read_config(path)
    except ConfigError as e:
        fail(str(e))
