"""newemail: the CGI program behind `https://<domain>/new`, handing out credentials.

nginx passes `/new` (and the legacy `/cgi-bin/newemail.py`) to fcgiwrap, which runs this
program once per request with the CGI environment; the ini comes from `CHATMAIL_INI` or the
default path. No account is created here: the program only draws a random address and
password, and the account comes into being when Delta Chat first logs in with them
(doc/contract.md §2.2). What it answers: doc/contract.md §8.2 and §4.4.

Registration (doc/accounts.md): in `closed` mode every request gets `403` and a one-line text
saying so; in `invite` mode only a request with `?token=` of a valid, unexpired, not used-up
invite gets credentials, and the address handed out is recorded (`registration.InviteStore`),
since doveauth then creates only such addresses. A GET in acme mode checks the token without
spending a use and redirects to `DCACCOUNT:https://<domain>/new?token=...`. A refused token
gets `403` with a text that says why (missing, not valid, expired, used up).

- POST: `200`, JSON `{"email", "password"}`, plus `"dclogin_url"` in self-signed TLS mode.
- GET in acme or external TLS mode: `301` to `DCACCOUNT:https://<domain>/new`; the app then
  POSTs. GET in self-signed mode: the same JSON as POST (the web page's `dclogin.js` uses GET).
- HEAD is GET without the body; other methods get `405`.

Every answer carries `Cache-Control: no-store`: credentials must never be cached. In open
mode the program keeps no state; in invite mode the invite's lock keeps concurrent requests
from spending one use twice. It never logs credentials or tokens.
"""

from __future__ import annotations

import json
import os
import secrets
import string
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import BinaryIO, NamedTuple, TextIO
from urllib.parse import parse_qs, quote

from . import fsutil, metrics, registration
from .config import DEFAULT_INI_PATH, Config, ConfigError, read_config
from .registration import EXPIRED, INVALID, MISSING, USED_UP, InviteStore, Settings

INI_ENV = "CHATMAIL_INI"
ALLOWED_METHODS = "GET, POST"

LOCAL_PART_ALPHABET = string.ascii_lowercase + string.digits
# Characters that need quoting or escaping in IMAP strings, Dovecot's %E dict keys, URLs or
# shells even inside quotes: leaving them out keeps copy-and-paste and every layer simple.
_TROUBLESOME = "\"'\\%` "
PASSWORD_PUNCTUATION = "".join(c for c in string.punctuation if c not in _TROUBLESOME)
PASSWORD_ALPHABET = string.ascii_letters + string.digits + PASSWORD_PUNCTUATION
EXTRA_PASSWORD_CHARS = 3  # /new generates password_min_length + 3 characters (doc/config.md)

# The program lives for one request, so its counts live on disk: a snapshot in a directory of
# its own (the deploy gives it to www-data), read by chatmail-metrics like the services' ones.
METRICS_DIR = metrics.METRICS_DIR / metrics.NEW_SUBDIR
SNAPSHOT = "newemail.json"
HANDED_OUT = "handed_out"

NO_STORE = ("Cache-Control", "no-store")
JSON_TYPE = ("Content-Type", "application/json")
TEXT_TYPE = ("Content-Type", "text/plain; charset=utf-8")

# what the app shows when /new hands out nothing (one line each)
REFUSALS = {
    "closed": "This relay does not create new accounts.",
    MISSING: "This relay creates accounts by invitation only: use an invite from its operator.",
    INVALID: "This invite is not valid: it was mistyped, or its operator revoked it.",
    EXPIRED: "This invite has expired: ask the relay's operator for a new one.",
    USED_UP: "This invite has been used up: ask the relay's operator for a new one.",
}

Choice = Callable[[Sequence[str]], str]
Generator = Callable[[Config], tuple[str, str]]


class Response(NamedTuple):
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    outcome: str = ""  # what the metric counts: HANDED_OUT, a refusal's reason, or nothing


# --- pure parts: credentials, URLs, the answer to a method ----------------------------------


def _random_text(alphabet: str, length: int, choice: Choice) -> str:
    return "".join(choice(alphabet) for _ in range(length))


def new_credentials(config: Config, choice: Choice = secrets.choice) -> tuple[str, str]:
    """A fresh (email, password) that passes doveauth's creation rules (doc/contract.md §2.2)."""
    local = _random_text(LOCAL_PART_ALPHABET, config.username_max_length, choice)
    password_length = config.password_min_length + EXTRA_PASSWORD_CHARS
    if password_length == registration.AUTORELAY_PASSWORD_LENGTH:
        # never the autorelay mark: the operator may refuse those, and chose this relay's own
        password_length += 1
    password = _random_text(PASSWORD_ALPHABET, password_length, choice)
    return f"{local}@{config.address_domain}", password


def dclogin_url(email: str, password: str, config: Config) -> str:
    """`dclogin:<email>?p=<pw>&v=1[&ih=<ip>&sh=<ip>]&ic=3` (doc/contract.md §8.3)."""
    params = [f"p={quote(password, safe='')}", "v=1"]
    if config.is_ipv4:
        params += [f"ih={config.mail_domain}", f"sh={config.mail_domain}"]
    params.append("ic=3")  # self-signed certificate: accept it
    return f"dclogin:{quote(email, safe='@[]')}?{'&'.join(params)}"


def account_url(config: Config, token: str | None = None) -> str:
    """`DCACCOUNT:https://<domain>/new`, with `?token=` of an invite (URL-safe characters)."""
    query = "" if token is None else f"?token={quote(token, safe='')}"
    return f"DCACCOUNT:https://{config.mail_domain}/new{query}"


def _credentials(email: str, password: str, config: Config) -> Response:
    data = {"email": email, "password": password}
    if config.tls_mode == "self":
        data["dclogin_url"] = dclogin_url(email, password, config)
    return Response(200, [JSON_TYPE, NO_STORE], json.dumps(data).encode(), HANDED_OUT)


def _no_credentials(config: Config, token: str | None) -> Response:
    """The answer of a request that hands out nothing: in self-signed mode (a HEAD) the
    headers of the credentials, else the redirect to the app."""
    if config.tls_mode == "self":
        return Response(200, [JSON_TYPE, NO_STORE], b"")
    return Response(301, [("Location", account_url(config, token)), NO_STORE], b"")


def refused(reason: str) -> Response:
    return Response(403, [TEXT_TYPE, NO_STORE], REFUSALS[reason].encode() + b"\n", reason)


@dataclass(frozen=True)
class Registration:
    """What the request needs of the registration state: settings, invites, the time."""

    settings: Settings
    invites: InviteStore
    now: float


def respond(
    method: str,
    config: Config,
    generate: Generator = new_credentials,
    token: str | None = None,
    reg: Registration | None = None,
) -> Response:
    """The answer to one request with HTTP `method` and invite `token` (doc/contract.md §4.4)."""
    if method not in ("GET", "HEAD", "POST"):
        headers = [TEXT_TYPE, ("Allow", ALLOWED_METHODS), NO_STORE]
        return Response(405, headers, b"method not allowed\n")
    mode = "open" if reg is None else reg.settings.mode
    # a HEAD, or a GET in acme mode (a browser, a prober) hands out nothing, and so spends no
    # use of an invite: the app POSTs after the redirect
    hands_out = method == "POST" or (method == "GET" and config.tls_mode == "self")
    if mode == "closed":
        response = refused("closed")
    elif reg is not None and mode == "invite":
        if hands_out:
            result = reg.invites.redeem(token, reg.now, lambda: generate(config))
            response = refused(result) if isinstance(result, str) else _credentials(*result, config)
        else:
            reason = reg.invites.check(token, reg.now)
            response = refused(reason) if reason else _no_credentials(config, token)
    elif hands_out:
        response = _credentials(*generate(config), config)
    else:
        response = _no_credentials(config, None)
    return response._replace(body=b"") if method == "HEAD" else response


def misconfigured() -> Response:
    return Response(500, [TEXT_TYPE, NO_STORE], b"this relay is misconfigured\n")


def render_cgi(response: Response) -> bytes:
    """The CGI output: a `Status` header, the other headers, a blank line, the body."""
    status = f"{response.status} {HTTPStatus(response.status).phrase}"
    lines = [f"Status: {status}", *(f"{name}: {value}" for name, value in response.headers)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii") + response.body


# --- CGI I/O ----------------------------------------------------------------------------------


def count(outcome: str, directory: Path, stderr: TextIO) -> None:
    """Add one to `chatmail_new_requests_total{outcome}` (doc/metrics.md), under a lock:
    fcgiwrap runs requests side by side. Counting never fails a request; without the
    directory (not a deployed relay) nothing is counted."""
    if not directory.is_dir():
        return
    registry = metrics.Registry()
    requests = registry.counter(
        "chatmail_new_requests_total",
        "Requests to /new that handed out credentials, or were refused, by outcome.",
        ("outcome",),
    )
    path = directory / SNAPSHOT
    try:
        with fsutil.file_lock(directory / ".lock", timeout=5.0):
            try:
                registry.merge_snapshot(json.loads(path.read_bytes()))
            except FileNotFoundError:
                pass
            except ValueError:
                print(f"newemail: {path} was damaged: counting from 0", file=stderr)
            requests.inc(outcome=outcome)
            metrics.write_snapshot(registry, path)
    except (OSError, fsutil.LockTimeout) as e:
        print(f"newemail: not counted in {path}: {type(e).__name__}", file=stderr)


def handle(environ: Mapping[str, str], stderr: TextIO, metrics_dir: Path = METRICS_DIR) -> Response:
    """Read the ini named by the environment and answer the request it describes."""
    path = Path(environ.get(INI_ENV) or DEFAULT_INI_PATH)
    try:
        config = read_config(path)
    except ConfigError as e:
        print(f"newemail: error: {e}", file=stderr)
        return misconfigured()
    tokens = parse_qs(environ.get("QUERY_STRING", "")).get("token", [])
    reg = Registration(
        registration.SettingsReader(config).current(),
        InviteStore(config.registration_path),
        time.time(),
    )
    response = respond(
        environ.get("REQUEST_METHOD", ""), config, token=tokens[0] if tokens else None, reg=reg
    )
    if response.outcome:
        count(response.outcome, metrics_dir, stderr)
    return response


def main(
    environ: Mapping[str, str] | None = None,
    stdout: BinaryIO | None = None,
    stderr: TextIO | None = None,
) -> None:
    environ = os.environ if environ is None else environ
    stdout = sys.stdout.buffer if stdout is None else stdout
    stderr = sys.stderr if stderr is None else stderr
    try:
        response = handle(environ, stderr)
    except Exception as e:  # noqa: BLE001 -- process boundary: answer 500, never a traceback
        print(f"newemail: error: unexpected {type(e).__name__}", file=stderr)
        response = misconfigured()._replace(body=b"internal error\n")
    stdout.write(render_cgi(response))
    stdout.flush()


if __name__ == "__main__":
    main()
