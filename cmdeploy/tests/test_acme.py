"""ACME (cmdeploy/acme): our certbot command against a real pebble, and the units.

Debian's certbot runs the exact command of `chatmail-acme.service` against Debian's pebble on
loopback; pebble-challtestsrv answers pebble's DNS queries with 127.0.0.1, where a small
HTTP server serves the webroot as nginx's port-80 server does on a relay. The deploy hook is
ours, with a stand-in `systemctl` on PATH that records what it was asked to reload.
"""

from __future__ import annotations

import functools
import http.server
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

import pytest
from free_ports import free_port

from chatmaild.config import Config
from cmdeploy import acme
from cmdeploy.lab.services import ensure_lab_ca
from cmdeploy.layout import Layout

needs_tools = pytest.mark.skipif(
    not all(shutil.which(t) for t in ("certbot", "pebble", "pebble-challtestsrv")),
    reason="needs Debian's certbot and pebble (scripts/test installs them)",
)


def wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"{proc.args} exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"nothing listens on {port}")


def make_layout(tmp: Path, **params: str) -> Layout:
    config = Config.from_params({"mail_domain": "chat.example.org", **params})
    return Layout(
        config,
        lib_dir=PurePosixPath(tmp / "lib"),
        acme_webroot=PurePosixPath(tmp / "webroot"),
        tls_dir=PurePosixPath(tmp / "tls"),
    )


def test_the_command_asks_for_the_three_names_with_an_ecdsa_key(tmp_path: Path) -> None:
    layout = make_layout(tmp_path, acme_email="ops@example.org")
    argv = acme.certbot_command(layout)
    domains = [argv[i + 1] for i, a in enumerate(argv) if a == "--domain"]
    assert domains == ["chat.example.org", "www.chat.example.org", "mta-sts.chat.example.org"]
    assert argv[argv.index("--key-type") + 1] == "ecdsa"
    assert argv[argv.index("--elliptic-curve") + 1] == "secp256r1"
    assert argv[argv.index("--email") + 1] == "ops@example.org"
    assert argv[argv.index("--server") + 1] == "https://acme-v02.api.letsencrypt.org/directory"
    assert "--register-unsafely-without-email" in acme.certbot_command(make_layout(tmp_path))


def test_a_changed_external_certificate_reloads_all_three_servers(tmp_path: Path) -> None:
    # Postfix's smtpd reads the certificate only when a process starts: without the reload a
    # running one would go on serving the replaced certificate
    external = make_layout(
        tmp_path, tls_external_cert_and_key=f"{tmp_path}/cert.pem {tmp_path}/key.pem"
    )
    service = acme.external_reload_files(external)["/etc/systemd/system/tls-cert-reload.service"]
    [start] = [line for line in service[0].splitlines() if line.startswith("ExecStart=")]
    command = start.removeprefix("ExecStart=").split()
    assert command[:2] == ["/usr/bin/systemctl", "try-reload-or-restart"]
    assert sorted(command[2:]) == ["dovecot.service", "nginx.service", "postfix.service"]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd")
def test_systemd_analyze_verifies_the_units(tmp_path: Path) -> None:
    layout = make_layout(tmp_path)
    external = make_layout(
        tmp_path, tls_external_cert_and_key=f"{tmp_path}/cert.pem {tmp_path}/key.pem"
    )
    contents = {**acme.acme_files(layout), **acme.external_reload_files(external)}
    assert (
        f"PathChanged={tmp_path}/key.pem" in contents[f"/etc/systemd/system/{acme.RELOAD_PATH}"][0]
    )
    units = []
    for path, (content, _mode) in contents.items():
        local = tmp_path / PurePosixPath(path).name
        local.write_text(content)
        if local.suffix in (".service", ".timer"):
            units.append(str(local))
    result = subprocess.run(
        ["systemd-analyze", "verify", *units], capture_output=True, text=True, check=False
    )
    ours = [
        line
        for line in result.stderr.splitlines()
        if "chatmail-acme" in line or "tls-cert-reload" in line
    ]
    assert not ours, result.stderr


@pytest.fixture
def pebble(tmp_path: Path) -> Iterator[tuple[str, Path, int]]:
    """(directory URL, CA file of its API, the HTTP-01 port it validates on)."""
    api_cert, api_key = ensure_lab_ca(tmp_path, address="127.0.0.1")
    port, management, dns_port, http_port = free_port(), free_port(), free_port(), free_port()
    dns = subprocess.Popen(
        [
            "pebble-challtestsrv",
            "-defaultIPv4", "127.0.0.1", "-defaultIPv6", "",
            "-dns01", f"127.0.0.1:{dns_port}", "-http01", "", "-https01", "",
            "-tlsalpn01", "", "-management", f"127.0.0.1:{free_port()}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    conf = tmp_path / "pebble.json"
    conf.write_text(
        '{"pebble": {'
        f'"listenAddress": "127.0.0.1:{port}", '
        f'"managementListenAddress": "127.0.0.1:{management}", '
        f'"certificate": "{api_cert}", "privateKey": "{api_key}", '
        f'"httpPort": {http_port}, "tlsPort": {free_port()}, "ocspResponderURL": ""'
        "}}"
    )
    env = {**os.environ, "PEBBLE_VA_NOSLEEP": "1", "PEBBLE_WFE_NONCEREJECT": "0"}
    server = subprocess.Popen(
        ["pebble", "-config", str(conf), "-dnsserver", f"127.0.0.1:{dns_port}"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port, server)
        yield f"https://127.0.0.1:{port}/dir", tmp_path / "lab-ca.pem", http_port
    finally:
        for proc in (server, dns):
            proc.terminate()
            proc.wait(timeout=10)


@pytest.fixture
def webroot_server(tmp_path: Path, pebble: tuple[str, Path, int]) -> Iterator[Path]:
    """Port-80 duty: the challenge files certbot writes, served as nginx serves them."""
    webroot = tmp_path / "webroot"
    webroot.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(webroot))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", pebble[2]), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield webroot
    finally:
        httpd.shutdown()
        httpd.server_close()


@needs_tools
def test_certbot_obtains_the_certificate_and_the_hook_installs_it(
    tmp_path: Path, pebble: tuple[str, Path, int], webroot_server: Path
) -> None:
    directory, api_ca, _ = pebble
    layout = make_layout(tmp_path, acme_directory_url=directory)
    for path, (content, mode) in acme.acme_files(layout).items():
        if path == str(acme.deploy_hook(layout)):
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).write_text(content)
            Path(path).chmod(int(mode, 8))
    Path(layout.tls_dir).mkdir()
    # systemctl stand-in: the hook's reload request is recorded, not sent to a system manager
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "systemctl.calls"
    (bin_dir / "systemctl").write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    (bin_dir / "systemctl").chmod(0o755)
    state = [f"--{d}-dir={tmp_path / 'certbot' / d}" for d in ("config", "work", "logs")]
    env = {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "REQUESTS_CA_BUNDLE": str(api_ca),
    }

    def certbot() -> subprocess.CompletedProcess[str]:
        argv = [*acme.certbot_command(layout), *state]
        return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120)

    result = certbot()
    assert result.returncode == 0, result.stdout + result.stderr
    cert = subprocess.run(
        ["openssl", "x509", "-in", str(layout.tls.cert), "-noout", "-issuer", "-ext",
         "subjectAltName", "-pubkey"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert "Pebble" in cert
    for name in acme.names(layout):
        assert f"DNS:{name}" in cert
    key_pub = subprocess.run(
        ["openssl", "pkey", "-in", str(layout.tls.key), "-pubout"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert key_pub.strip() in cert  # the installed key belongs to the installed certificate
    assert oct(Path(layout.tls.key).stat().st_mode & 0o777) == "0o600"
    assert calls.read_text().split() == [
        "try-reload-or-restart", "nginx.service", "dovecot.service", "postfix.service"
    ]  # fmt: skip

    # the daily timer's run: nothing due, nothing asked of the CA, nothing reloaded
    calls.unlink()
    result = certbot()
    assert result.returncode == 0, result.stdout + result.stderr
    assert not calls.exists()
