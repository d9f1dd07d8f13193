"""The relay's home page in a real browser (headless Chromium from Debian), as a person sees
it: the page loads, its QR code decodes with zbar to the exact account URI, and the
credentials in it log in. The screenshot is kept as an artifact."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import urllib.parse
from pathlib import Path

import pytest
from chatmail_online import Credentials, Registry, Relay

pytestmark = pytest.mark.timeout(180)

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",  # as root
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",  # nothing but the relay may be contacted
    "--disable-component-update",
    "--disable-sync",
    "--window-size=480,1400",  # a phone's width
    "--virtual-time-budget=8000",  # let the page's script fetch /new and draw the QR code
]


def screenshot(url: str, path: Path, unknown_ca: bool) -> None:
    chromium = shutil.which("chromium")
    if chromium is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed (scripts/test installs it)")
        pytest.skip("needs Debian's chromium")
    with tempfile.TemporaryDirectory() as profile:
        flags = [*CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--screenshot={path}"]
        if unknown_ca:
            flags.append("--ignore-certificate-errors")
        subprocess.run([chromium, *flags, url], capture_output=True, timeout=120, check=False)
    assert path.exists(), "chromium made no screenshot"


def artifacts_dir(tmp_path: Path) -> Path:
    """Where screenshots stay after the run: beside the lab's files, else the test's tmp."""
    key = json.loads(os.environ.get("CHATMAIL_ONLINE", "{}")).get("ssh_key")
    base = Path(key).parent / "artifacts" if key else tmp_path
    base.mkdir(parents=True, exist_ok=True)
    return base


def test_home_page_qr_code_in_a_browser(relay1: Relay, registry: Registry, tmp_path: Path) -> None:
    config = relay1.config
    path = artifacts_dir(tmp_path) / f"{relay1.domain}-index.png"
    # chromium keeps its own trust store, which knows no private (lab) CA
    unknown_ca = config.tls_mode == "self" or relay1.ca_cert is not None
    screenshot(f"https://{relay1.domain}/", path, unknown_ca=unknown_ca)
    decoded = subprocess.run(
        ["zbarimg", "--raw", "-q", str(path)], capture_output=True, text=True, check=False
    ).stdout.strip()
    if config.tls_mode != "self":
        assert decoded == f"DCACCOUNT:https://{config.mail_domain}/new"
        return
    # self-signed: the page asked /new for a login and drew it as a dclogin: code
    local = config.username_max_length
    pattern = rf"dclogin:([a-z0-9]{{{local}}}@{re.escape(config.address_domain)})\?p=([^&]+)&v=1"
    match = re.fullmatch(pattern + r"(&ih=[^&]+&sh=[^&]+)?&ic=3", decoded)
    assert match, decoded
    creds = registry.add(Credentials(match.group(1), urllib.parse.unquote(match.group(2)), relay1))
    with creds.imap() as conn:  # the code's login works: the account comes into being
        assert conn.select("INBOX")[0] == "OK"
