"""What every chatmaild service does at start: log to stderr (journald), load the config."""

from __future__ import annotations

import argparse
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


def dict_service_parser(prog: str, description: str) -> argparse.ArgumentParser:
    """The command line every dict service shares: `<prog> SOCKET INI` (relay-spec §2.1)."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("socket", type=Path, help="unix socket to listen on")
    parser.add_argument("ini", type=Path, help="path of chatmail.ini")
    return parser


def load_config_or_exit(path: Path) -> Config:
    try:
        return read_config(path)
    except ConfigError as e:
        fail(str(e))
