"""`cmdeploy test`: the online suite (cmdeploy/tests/online) against deployed relays.

The target is described by the JSON of `cmdeploy lab status --json` (`relays`, `client_netns`,
`ssh_key`, `push_tokens`, ...). The suite reads it from the environment variable
`CHATMAIL_ONLINE`; without that variable its tests skip. When the description names a client
network namespace (the lab's, where the relay names resolve), pytest runs inside it with
`ip netns exec`, which needs root, as the lab itself does.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ONLINE_ENV = "CHATMAIL_ONLINE"
SUITE = Path("cmdeploy") / "tests" / "online"


def repo_root() -> Path:
    """The checkout this module belongs to (cmdeploy/src/cmdeploy/online.py, three up)."""
    return Path(__file__).resolve().parents[3]


def online_command(status: dict[str, Any], pytest_args: list[str]) -> list[str]:
    # deltachat-rpc-client registers a pytest plugin for its own test fixtures; the suite has
    # its own, so keep the plugin's header and hooks out.
    argv = [sys.executable, "-m", "pytest", "-p", "no:deltachat_rpc_client.pytestplugin"]
    argv += [str(SUITE), *pytest_args]
    netns = status.get("client_netns")
    if netns:
        argv = ["ip", "netns", "exec", str(netns), *argv]
    return argv


def run_online_tests(status: dict[str, Any], pytest_args: list[str]) -> int:
    """Run the online suite against the relays `status` describes; pytest's exit code."""
    root = repo_root()
    if not (root / SUITE).is_dir():
        print(f"cmdeploy test: the online suite is not here: {root / SUITE}", file=sys.stderr)
        print("cmdeploy test: run it from a checkout (pip install -e cmdeploy)", file=sys.stderr)
        return 4  # pytest's "usage error"
    env = {**os.environ, ONLINE_ENV: json.dumps(status)}
    proc = subprocess.run(online_command(status, pytest_args), cwd=root, env=env, check=False)
    return proc.returncode
