"""nginx: our files for every TLS mode, checked by Debian's own nginx.

- Unit: the autoconfig XML, the MTA-STS policy, which files we write and what they must not
  contain.
- Component: `nginx -t` on a tree that mirrors Debian's /etc/nginx (its nginx.conf, the stream
  module's load file, the default site) with our two files dropped in; then that nginx running
  for real on free loopback ports, with stand-ins behind it (TLS "Dovecot" and "Postfix", a
  fake filtermail, the real newemail CGI behind the real fcgiwrap), probed by TLS and HTTP
  clients from distinct loopback addresses so that the logs can be searched for them.
"""

from __future__ import annotations

import contextlib
import http.client
import http.server
import json
import os
import re
import shutil
import signal
import socket
import socketserver
import ssl
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import cast

import pytest
from free_ports import free_port

from chatmaild import newemail, registration
from chatmaild.config import HEADER_HEADROOM, Config
from chatmaild.registration import InviteStore, SettingsReader
from cmdeploy.layout import Layout, Tls
from cmdeploy.nginx import (
    HTTP_CONF,
    STREAM_CONF,
    Sockets,
    autoconfig_xml,
    mta_sts_txt,
    nginx_files,
    nginx_string,
)
from cmdeploy.templates import MANAGED_BY

STREAM_MODULE = Path("/usr/lib/nginx/modules/ngx_stream_module.so")
DEBIAN_ETC = Path("/etc/nginx")
MAX_MESSAGE_SIZE = 65536

# The configurations the deploy issue names; "external" gets its cert paths at run time.
CASES: dict[str, dict[str, str]] = {
    "acme": {"mail_domain": "chat.example.org"},
    "self": {"mail_domain": "_chat.example.org"},
    "ipv4": {"mail_domain": "192.0.2.10"},
    "external": {"mail_domain": "chat.example.org"},
    "noipv6": {"mail_domain": "chat.example.org", "disable_ipv6": "true"},
}
CERT_NAMES = [
    *(
        f"DNS:{p}{d}"
        for d in ("chat.example.org", "_chat.example.org")
        for p in ("", "www.", "mta-sts.")
    ),
    "IP:192.0.2.10",
]


def make_config(case: str, **extra: str) -> Config:
    return Config.from_params({**CASES[case], "max_message_size": str(MAX_MESSAGE_SIZE), **extra})


def server_blocks(conf: str) -> list[str]:
    """The top-level `server { ... }` blocks of one of our files (comments dropped)."""
    code = re.sub(r"#[^\n]*", "", conf)
    blocks, depth, start = [], 0, -1
    for m in re.finditer(r"\bserver\s*\{|[{}]", code):
        if depth == 0 and m.group().startswith("server"):
            start = m.start()
        depth += 1 if m.group().endswith("{") else -1
        if depth == 0 and start >= 0:
            blocks.append(code[start : m.end()])
            start = -1
    return blocks


# --- unit: pure rendering ---------------------------------------------------------------------


def _servers(root: ET.Element, kind: str) -> list[tuple[str, int, str, str, str]]:
    return [
        (
            s.findtext("hostname", ""),
            int(s.findtext("port", "0")),
            s.findtext("socketType", ""),
            s.findtext("username", ""),
            s.findtext("authentication", ""),
        )
        for s in root.iter(kind)
    ]


@pytest.mark.parametrize("domain", ["chat.example.org", "_chat.example.org", "192.0.2.10"])
def test_autoconfig_lists_the_spec_ports(domain: str) -> None:
    config = Config.from_params({"mail_domain": domain})
    root = ET.fromstring(autoconfig_xml(config))  # noqa: S314 -- our own output
    assert root.tag == "clientConfig"
    provider = root.find("emailProvider")
    assert provider is not None and provider.get("id") == domain
    assert provider.findtext("domain") == domain
    login = ("%EMAILADDRESS%", "password-cleartext")
    assert _servers(root, "incomingServer") == [
        (domain, 993, "SSL", *login),
        (domain, 143, "STARTTLS", *login),
        (domain, 443, "SSL", *login),
    ]
    assert _servers(root, "outgoingServer") == [
        (domain, 465, "SSL", *login),
        (domain, 587, "STARTTLS", *login),
        (domain, 443, "SSL", *login),
    ]
    assert all(s.get("type") == "imap" for s in root.iter("incomingServer"))
    assert all(s.get("type") == "smtp" for s in root.iter("outgoingServer"))


def test_mta_sts_policy_is_exact() -> None:
    config = Config.from_params({"mail_domain": "chat.example.org"})
    assert mta_sts_txt(config) == (
        "version: STSv1\nmode: enforce\nmx: chat.example.org\nmax_age: 2419200\n"
    )


@pytest.mark.parametrize("case", CASES)
def test_only_our_own_files_are_written(case: str) -> None:
    files = nginx_files(Layout(make_config(case)))
    assert set(files) == {str(STREAM_CONF), str(HTTP_CONF)}
    assert str(STREAM_CONF).startswith("/etc/nginx/modules-enabled/")
    assert str(HTTP_CONF).startswith("/etc/nginx/conf.d/") and str(HTTP_CONF).endswith(".conf")
    for content in files.values():
        assert content.startswith(f"# {MANAGED_BY}\n")
        # libnginx-mod-stream's own file loads the module; loading it twice is an error
        assert not re.search(r"^\s*load_module", content, re.M)


@pytest.mark.parametrize(
    ("case", "names", "absent"),
    [
        ("acme", "chat.example.org mta-sts.chat.example.org", ()),
        ("self", "_chat.example.org mta-sts._chat.example.org", ()),
        ("ipv4", "192.0.2.10", ("www.", "mta-sts", "acme-challenge")),
    ],
)
def test_server_names(case: str, names: str, absent: tuple[str, ...]) -> None:
    http = nginx_files(Layout(make_config(case)))[str(HTTP_CONF)]
    assert f"server_name {names};" in http
    for text in absent:
        assert text not in http


@pytest.mark.parametrize("case", CASES)
def test_ipv6_listeners_unless_disabled(case: str) -> None:
    config = make_config(case)
    files = nginx_files(Layout(config))
    stream, http = files[str(STREAM_CONF)], files[str(HTTP_CONF)]
    if config.disable_ipv6:
        assert "[::]" not in stream + http
    else:
        assert "listen [::]:443;" in stream and "listen [::]:80;" in http
    assert "listen 443;" in stream and "listen 80;" in http


@pytest.mark.parametrize("case", CASES)
def test_per_client_limit_only_when_self_signed(case: str) -> None:
    config = make_config(case)
    files = nginx_files(Layout(config))
    self_signed = config.tls_mode == "self"
    assert ("limit_req " in files[str(HTTP_CONF)]) == self_signed
    assert ("proxy_protocol" in files[str(STREAM_CONF)]) == self_signed
    assert ("acme-challenge" in files[str(HTTP_CONF)]) == (config.tls_mode == "acme")


@pytest.mark.parametrize("case", CASES)
def test_every_server_logs_once_and_without_client_addresses(case: str) -> None:
    http = nginx_files(Layout(make_config(case)))[str(HTTP_CONF)]
    blocks = server_blocks(http)
    assert len(blocks) == (2 if case == "ipv4" else 3)
    for block in blocks:
        assert len(re.findall(r"^\s*access_log ", block, re.M)) == 1, block
        assert re.search(r"^\s*server_tokens off;", block, re.M), block
    log_format = http[http.index("log_format") : http.index(";", http.index("log_format"))]
    for variable in ("addr", "forwarded", "request_uri", "args", "user_agent", "referer"):
        assert variable not in log_format


def test_mxdeliv_body_limit_follows_the_config() -> None:
    config = make_config("acme", filtermail_http_port_incoming="10099")
    http = nginx_files(Layout(config))[str(HTTP_CONF)]
    mxdeliv = http[http.index("location = /mxdeliv") :]
    # a peer's message of max_message_size with the headers its relay added
    assert f"client_max_body_size {config.inner_message_size_limit};" in mxdeliv
    assert config.inner_message_size_limit == MAX_MESSAGE_SIZE + HEADER_HEADROOM
    assert "proxy_pass http://127.0.0.1:10099;" in mxdeliv


def test_nginx_string_round_trips_quotes_and_refuses_variables() -> None:
    assert nginx_string("a 'b' \\ c\n") == "'a \\'b\\' \\\\ c\n'"
    with pytest.raises(ValueError, match=r"\$"):
        nginx_string("$remote_addr")


def test_debian_includes_where_our_files_go() -> None:
    """Our file placement rests on Debian's nginx.conf; check it on this machine."""
    conf_path = DEBIAN_ETC / "nginx.conf"
    if not conf_path.exists():
        pytest.skip("needs Debian's nginx")
    conf = re.sub(r"#.*", "", conf_path.read_text())
    main_include = conf.index("include /etc/nginx/modules-enabled/*.conf;")
    assert main_include < conf.index("events {") < conf.index("http {")
    http = conf[conf.index("http {") :]
    assert "include /etc/nginx/conf.d/*.conf;" in http
    assert not re.search(r"\bstream\s*\{", conf)  # nginx allows one stream block: ours
    # every module load file must come before our stream block
    enabled = sorted(p.name for p in (DEBIAN_ETC / "modules-enabled").glob("*.conf"))
    assert all(name < STREAM_CONF.name for name in enabled if name != STREAM_CONF.name)


# --- component: Debian's nginx ----------------------------------------------------------------


def _missing_tools() -> str | None:
    for tool in ("nginx", "fcgiwrap", "openssl"):
        if shutil.which(tool) is None:
            return f"needs {tool} (apt-get install nginx libnginx-mod-stream fcgiwrap)"
    if not STREAM_MODULE.exists():
        return "needs libnginx-mod-stream"
    return None


@pytest.fixture(scope="module")
def tools() -> None:
    missing = _missing_tools()
    if missing and os.environ.get("CI"):
        pytest.fail(f"nginx tests cannot run: {missing}")
    if missing:
        pytest.skip(missing)


@pytest.fixture(scope="module")
def cert(tools: None, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A self-signed P-256 certificate for every test name; key.pem lies beside it."""
    directory = tmp_path_factory.mktemp("cert")
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"),
            *("-nodes", "-days", "2", "-subj", "/CN=chatmail nginx test"),
            *("-addext", "subjectAltName=" + ",".join(CERT_NAMES)),
            *("-keyout", str(directory / "key.pem"), "-out", str(directory / "cert.pem")),
        ],
        check=True,
        capture_output=True,
    )
    return directory / "cert.pem"


@dataclass(frozen=True)
class _TestLayout(Layout):
    """The relay's layout inside a temp tree; acme and self-signed modes use the test cert."""

    test_cert: PurePosixPath = PurePosixPath("/nonexistent/cert.pem")

    @property
    def tls(self) -> Tls:
        if self.config.tls_mode == "external":
            return super().tls
        mode = self.config.tls_mode
        return Tls(mode, self.test_cert, self.test_cert.with_name("key.pem"))


# Debian 12's /etc/nginx/nginx.conf with its paths moved into the tree (and its temp paths,
# which Debian compiles in as /var/lib/nginx); one worker is enough here.
DEBIAN_NGINX_CONF = """\
{user}
worker_processes 1;
pid {root}/nginx.pid;
error_log {root}/log/error.log;
include {root}/etc/nginx/modules-enabled/*.conf;

events {{
    worker_connections 768;
}}

http {{
    sendfile on;
    tcp_nopush on;
    types_hash_max_size 2048;
    include {root}/etc/nginx/mime.types;
    default_type application/octet-stream;
    ssl_protocols TLSv1 TLSv1.1 TLSv1.2 TLSv1.3;
    ssl_prefer_server_ciphers on;
    access_log {root}/log/access.log;
    gzip on;
    # Debian's are under /var/lib/nginx
    client_body_temp_path {root}/tmp/body;
    proxy_temp_path {root}/tmp/proxy;
    fastcgi_temp_path {root}/tmp/fastcgi;
    uwsgi_temp_path {root}/tmp/uwsgi;
    scgi_temp_path {root}/tmp/scgi;
    include {root}/etc/nginx/conf.d/*.conf;
    include {root}/etc/nginx/sites-enabled/*;
}}
"""

# Debian's sites-enabled/default: the operator's site that must keep working beside ours.
DEBIAN_DEFAULT_SITE = """\
server {{
{listen}
    root {root}/html;
    index index.html;
    server_name _;
    location / {{
        try_files $uri $uri/ =404;
    }}
}}
"""


def build_tree(root: Path, layout: Layout, sockets: Sockets, log: str) -> Path:
    """Debian's /etc/nginx with our files, below `root`; returns the nginx.conf path."""
    etc = root / "etc" / "nginx"
    for directory in ("modules-enabled", "conf.d", "sites-enabled"):
        (etc / directory).mkdir(parents=True, exist_ok=True)
    for name in ("mime.types", "fastcgi_params"):
        shutil.copy(DEBIAN_ETC / name, etc / name)
    (etc / "modules-enabled" / "50-mod-stream.conf").write_text(f"load_module {STREAM_MODULE};\n")
    for directory in ("log", "tmp", "html"):
        (root / directory).mkdir(exist_ok=True)
    (root / "html" / "index.html").write_text("operator's own site\n")
    listen = [f"    listen {a}:{sockets.http} default_server;" for a in ("127.0.0.1", "[::1]")]
    (etc / "sites-enabled" / "default").write_text(
        DEBIAN_DEFAULT_SITE.format(root=root, listen="\n".join(listen))
    )
    for path, content in nginx_files(layout, sockets, log).items():
        target = root / PurePosixPath(path).relative_to("/")
        target.write_text(content)
    # As root, workers would run as nobody and could not read the pytest temp tree.
    user = "user root;" if os.geteuid() == 0 else ""
    conf = etc / "nginx.conf"
    conf.write_text(DEBIAN_NGINX_CONF.format(root=root, user=user))
    return conf


def _layout(case: str, root: Path, cert: Path, **extra: str) -> _TestLayout:
    if case == "external":
        extra["tls_external_cert_and_key"] = f"{cert} {cert.with_name('key.pem')}"
    return _TestLayout(
        make_config(case, **extra),
        lib_dir=PurePosixPath(root / "lib"),
        www_root=PurePosixPath(root / "www"),
        acme_webroot=PurePosixPath(root / "acme"),
        test_cert=PurePosixPath(cert),
    )


def nginx_test(conf: Path, root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["nginx", "-t", "-c", str(conf), "-p", f"{root}/"], capture_output=True, text=True
    )


@pytest.mark.parametrize("case", CASES)
def test_nginx_accepts_our_files_beside_debians(case: str, cert: Path, tmp_path: Path) -> None:
    """The production rendering (ports 443/80/8443 and all): `nginx -t` opens no sockets."""
    layout = _layout(case, tmp_path, cert)
    conf = build_tree(tmp_path, layout, Sockets(), f"{tmp_path}/log/chatmail.log")
    result = nginx_test(conf, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "[warn]" not in result.stderr, result.stderr


def test_an_operators_own_stream_block_is_refused(cert: Path, tmp_path: Path) -> None:
    """The documented limit of installing our stream block beside nginx.conf: one per nginx."""
    log = f"{tmp_path}/log/chatmail.log"
    conf = build_tree(tmp_path, _layout("acme", tmp_path, cert), Sockets(), log)
    (tmp_path / "etc/nginx/modules-enabled/60-operator.conf").write_text(
        "stream { server { listen 127.0.0.1:9999; proxy_pass 127.0.0.1:9998; } }\n"
    )
    result = nginx_test(conf, tmp_path)
    assert result.returncode != 0 and '"stream" directive is duplicate' in result.stderr


# --- component: a running nginx -----------------------------------------------------------------


class _BannerServer(socketserver.ThreadingTCPServer):
    """Stands in for Dovecot's imaps or Postfix's smtps: terminates TLS, sends one line."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, context: ssl.SSLContext, banner: bytes) -> None:
        self.context, self.banner = context, banner
        super().__init__(("127.0.0.1", 0), _BannerHandler)


class _BannerHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        server = cast(_BannerServer, self.server)
        try:
            with server.context.wrap_socket(self.request, server_side=True) as tls:
                tls.sendall(server.banner)
                tls.recv(1)  # until the client closes
        except OSError:  # includes ssl.SSLError: a probe that is not TLS
            pass


@dataclass
class _Delivery:
    method: str
    path: str
    mail_from: str | None
    mail_to: list[str]
    body: bytes


class _FakeFiltermail(http.server.ThreadingHTTPServer):
    """Stands in for filtermail's /mxdeliv listener and records what nginx forwards."""

    daemon_threads = True

    def __init__(self) -> None:
        self.deliveries: list[_Delivery] = []
        super().__init__(("127.0.0.1", 0), _FiltermailHandler)


class _FiltermailHandler(http.server.BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        server = cast(_FakeFiltermail, self.server)
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        server.deliveries.append(
            _Delivery(
                self.command,
                self.path,
                self.headers.get("X-MAIL-FROM"),
                self.headers.get_all("X-MAIL-TO") or [],
                body,
            )
        )
        reply = b"250 OK\n"
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, format: str, *args: object) -> None:
        pass  # BaseHTTPRequestHandler would print the client's address on stderr


@dataclass
class Relay:
    case: str
    config: Config
    layout: Layout
    sockets: Sockets
    root: Path
    cert: Path
    log: Path  # the log target we give nginx_files
    filtermail: _FakeFiltermail

    @property
    def domain(self) -> str:
        return self.config.mail_domain


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    """Poll for an event that has no notification (a port opening, a log line written)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def _accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


def _newemail_script() -> Path:
    script = Path(sys.executable).with_name("chatmail-newemail")
    found = str(script) if script.exists() else shutil.which("chatmail-newemail")
    if not found:
        pytest.fail("chatmail-newemail is not installed (scripts/initenv.sh)")
    return Path(found)


@pytest.fixture(scope="module", params=list(CASES))
def relay(
    request: pytest.FixtureRequest, cert: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Relay]:
    case = cast(str, request.param)
    root = tmp_path_factory.mktemp(f"nginx-{case}")
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, cert.with_name("key.pem"))
    server_tls.set_alpn_protocols(["imap", "smtp"])
    imaps = _BannerServer(server_tls, b"* OK imap-backend\r\n")
    smtps = _BannerServer(server_tls, b"220 smtp-backend\r\n")
    filtermail = _FakeFiltermail()
    servers: list[socketserver.BaseServer] = [imaps, smtps, filtermail]
    for server in servers:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    fcgiwrap: subprocess.Popen[bytes] | None = None
    nginx: subprocess.Popen[bytes] | None = None
    try:
        registration_dir = root / "registration"
        InviteStore(registration_dir).make_dirs()
        layout = _layout(
            case,
            root,
            cert,
            filtermail_http_port_incoming=str(filtermail.server_address[1]),
            registration_dir=str(registration_dir),
        )
        sockets = Sockets(
            public_ipv4="127.0.0.1",
            public_ipv6="[::1]",
            https=free_port(),
            http=free_port(),
            web=free_port(),
            imaps=int(imaps.server_address[1]),
            smtps=int(smtps.server_address[1]),
            imap_hop=free_port(),
            smtp_hop=free_port(),
            fcgiwrap=f"{root}/fcgiwrap.socket",
        )
        log = root / "log" / "chatmail.log"
        conf = build_tree(root, layout, sockets, str(log))
        www, acme_dir = Path(str(layout.www_root)), Path(str(layout.acme_webroot))
        www.mkdir()
        (www / "index.html").write_text("<h1>chatmail relay</h1>\n")
        (acme_dir / ".well-known" / "acme-challenge").mkdir(parents=True)
        (acme_dir / ".well-known" / "acme-challenge" / "t0ken").write_text("t0ken.thumbprint")
        bin_dir = Path(str(layout.bin("x"))).parent
        bin_dir.mkdir(parents=True)
        (bin_dir / "chatmail-newemail").symlink_to(_newemail_script())
        params = {
            **CASES[case],
            "max_message_size": str(MAX_MESSAGE_SIZE),
            "registration_dir": str(registration_dir),
        }
        if case == "external":
            params["tls_external_cert_and_key"] = layout.config.tls_external_cert_and_key
        ini = "[params]\n" + "".join(f"{k} = {v}\n" for k, v in params.items())
        Path(str(layout.ini)).write_text(ini)

        # its own process group: fcgiwrap forks its workers, and they must end with it
        fcgiwrap = subprocess.Popen(
            ["fcgiwrap", "-c", "2", "-s", f"unix:{sockets.fcgiwrap}"], start_new_session=True
        )
        wait_until(lambda: Path(sockets.fcgiwrap).exists(), "fcgiwrap's socket")
        stderr = (root / "log" / "nginx.stderr").open("wb")
        with stderr:
            nginx = subprocess.Popen(
                ["nginx", "-c", str(conf), "-p", f"{root}/", "-g", "daemon off;"],
                stderr=stderr,
            )

        def listening() -> bool:
            if nginx is not None and nginx.poll() is not None:
                errors = (root / "log" / "error.log").read_text(errors="replace")
                raise AssertionError(f"nginx exited: {errors}")
            return _accepts(sockets.https) and _accepts(sockets.http)

        wait_until(listening, "nginx's listeners")
        yield Relay(case, layout.config, layout, sockets, root, cert, log, filtermail)
    finally:
        if nginx is not None:
            nginx.terminate()  # the master stops its workers
            nginx.wait(timeout=10)
        if fcgiwrap is not None:
            os.killpg(fcgiwrap.pid, signal.SIGTERM)
            fcgiwrap.wait(timeout=10)
        for server in servers:
            server.shutdown()
            server.server_close()


# --- clients ----------------------------------------------------------------------------------


def client_tls(relay: Relay, alpn: list[str] | None = None) -> ssl.SSLContext:
    """A client that trusts only the test certificate and checks the relay's name."""
    context = ssl.create_default_context(cafile=relay.cert)
    if alpn:
        context.set_alpn_protocols(alpn)
    return context


@dataclass
class Reply:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode()


class _Connection(http.client.HTTPConnection):
    """HTTP(S) to `address` while naming `host` in SNI and the Host header (no DNS)."""

    def __init__(
        self,
        host: str,
        address: str,
        port: int,
        tls: ssl.SSLContext | None,
        source: str | None,
    ) -> None:
        super().__init__(host, port, timeout=10)
        self.address, self.tls = address, tls
        self.source = (source, 0) if source else None

    def connect(self) -> None:
        sock = socket.create_connection((self.address, self.port), self.timeout, self.source)
        self.sock = self.tls.wrap_socket(sock, server_hostname=self.host) if self.tls else sock


def request(
    relay: Relay,
    method: str,
    path: str,
    *,
    host: str | None = None,
    headers: list[tuple[str, str]] | None = None,
    body: bytes | None = None,
    https: bool = True,
    alpn: list[str] | None = None,
    source: str | None = "127.0.0.2",
    ipv6: bool = False,
) -> Reply:
    port = relay.sockets.https if https else relay.sockets.http
    tls = client_tls(relay, alpn) if https else None
    address = "::1" if ipv6 else "127.0.0.1"
    conn = _Connection(host or relay.domain, address, port, tls, None if ipv6 else source)
    try:
        conn.putrequest(method, path)
        for name, value in headers or []:
            conn.putheader(name, value)
        if body is not None:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        response = conn.getresponse()
        return Reply(response.status, response.headers, response.read())
    finally:
        conn.close()


def banner(relay: Relay, alpn: list[str], source: str = "127.0.0.2") -> tuple[str | None, bytes]:
    """TLS to port 443 with `alpn`: (the protocol the backend chose, its first line)."""
    raw = socket.create_connection(
        ("127.0.0.1", relay.sockets.https), timeout=10, source_address=(source, 0)
    )
    with client_tls(relay, alpn).wrap_socket(raw, server_hostname=relay.domain) as tls:
        return tls.selected_alpn_protocol(), tls.recv(100)


# --- tests against the running nginx ----------------------------------------------------------


def test_alpn_imap_and_smtp_reach_their_backends(relay: Relay) -> None:
    assert banner(relay, ["imap"]) == ("imap", b"* OK imap-backend\r\n")
    assert banner(relay, ["smtp"]) == ("smtp", b"220 smtp-backend\r\n")


@pytest.mark.parametrize("alpn", [None, ["http/1.1"], ["h2", "http/1.1"]])
def test_any_other_alpn_is_the_https_server(relay: Relay, alpn: list[str] | None) -> None:
    reply = request(relay, "GET", "/robots.txt", alpn=alpn)
    assert (reply.status, reply.text) == (200, "User-agent: *\nDisallow: /\n")
    assert reply.headers["Server"] == "nginx"  # server_tokens off: no version


def test_autoconfig_is_served(relay: Relay) -> None:
    reply = request(relay, "GET", "/.well-known/autoconfig/mail/config-v1.1.xml")
    assert reply.status == 200
    assert reply.headers["Content-Type"].startswith("application/xml")
    assert reply.text == autoconfig_xml(relay.config)
    root = ET.fromstring(reply.body)  # noqa: S314 -- from our own test nginx
    assert [s.findtext("port") for s in root.iter("incomingServer")] == ["993", "143", "443"]
    assert [s.findtext("port") for s in root.iter("outgoingServer")] == ["465", "587", "443"]


def test_mta_sts_policy_is_served_on_its_name(relay: Relay) -> None:
    if relay.config.is_ipv4:
        assert request(relay, "GET", "/.well-known/mta-sts.txt").status == 404
        return
    reply = request(relay, "GET", "/.well-known/mta-sts.txt", host=f"mta-sts.{relay.domain}")
    assert reply.status == 200
    assert reply.headers["Content-Type"].startswith("text/plain")
    assert reply.text == f"version: STSv1\nmode: enforce\nmx: {relay.domain}\nmax_age: 2419200\n"


def test_static_pages_come_from_the_web_root(relay: Relay) -> None:
    reply = request(relay, "GET", "/")
    assert (reply.status, reply.text) == (200, "<h1>chatmail relay</h1>\n")
    assert request(relay, "GET", "/nothing-here.html").status == 404


def test_www_redirects_to_the_apex(relay: Relay) -> None:
    if relay.config.is_ipv4:
        pytest.skip("an IPv4 relay has no www name")
    reply = request(relay, "GET", "/info.html?x=1", host=f"www.{relay.domain}")
    assert reply.status == 301
    assert reply.headers["Location"] == f"https://{relay.domain}/info.html?x=1"


def test_port_80_redirects_to_https(relay: Relay) -> None:
    names = [relay.domain] if relay.config.is_ipv4 else [relay.domain, f"www.{relay.domain}"]
    for name in names:
        reply = request(relay, "GET", "/page?q=1", host=name, https=False)
        assert reply.status == 301
        assert reply.headers["Location"] == f"https://{name}/page?q=1"


def test_acme_challenges_come_from_the_webroot(relay: Relay) -> None:
    reply = request(relay, "GET", "/.well-known/acme-challenge/t0ken", https=False)
    if relay.config.tls_mode == "acme":
        assert (reply.status, reply.text) == (200, "t0ken.thumbprint")
    else:
        assert reply.status == 301  # no ACME client on this relay


def test_the_operators_default_site_keeps_working(relay: Relay) -> None:
    reply = request(relay, "GET", "/", host="other.example.net", https=False)
    assert (reply.status, reply.text) == (200, "operator's own site\n")


def test_mxdeliv_is_proxied_with_its_envelope(relay: Relay) -> None:
    message = b"From: a@example.com\r\nTo: b@example.org\r\n\r\nhello\r\n"
    envelope = [
        ("X-MAIL-FROM", "a@example.com"),
        ("X-MAIL-TO", f"one@{relay.domain}"),
        ("X-MAIL-TO", f"two@{relay.domain}"),
    ]
    reply = request(relay, "POST", "/mxdeliv", headers=envelope, body=message)
    assert (reply.status, reply.text) == (200, "250 OK\n")
    delivery = relay.filtermail.deliveries[-1]
    assert delivery == _Delivery(
        "POST",
        "/mxdeliv",
        "a@example.com",
        [f"one@{relay.domain}", f"two@{relay.domain}"],
        message,
    )


def test_mxdeliv_over_the_size_limit_gets_filtermails_answer(relay: Relay) -> None:
    before = len(relay.filtermail.deliveries)
    envelope = [("X-MAIL-TO", f"one@{relay.domain}")]
    body = b"x" * (MAX_MESSAGE_SIZE + HEADER_HEADROOM + 1)
    reply = request(relay, "POST", "/mxdeliv", headers=envelope, body=body)
    assert (reply.status, reply.text) == (413, "552 Message exceeds maximum size\n")
    assert len(relay.filtermail.deliveries) == before
    exact = request(relay, "POST", "/mxdeliv", headers=envelope, body=body[:-1])
    assert exact.status == 200


def test_new_hands_out_credentials_through_fcgiwrap(relay: Relay) -> None:
    for path in ("/new", "/cgi-bin/newemail.py"):
        reply = request(relay, "POST", path, source="127.0.0.3")
        assert reply.status == 200, reply.text
        data = json.loads(reply.body)
        assert data["email"].endswith(f"@{relay.config.address_domain}")
        assert ("dclogin_url" in data) == (relay.config.tls_mode == "self")
    reply = request(relay, "GET", "/new", source="127.0.0.3")
    if relay.config.tls_mode == "self":
        assert reply.status == 200 and "dclogin_url" in json.loads(reply.body)
    else:
        assert reply.status == 301
        assert reply.headers["Location"] == f"DCACCOUNT:https://{relay.domain}/new"


@pytest.fixture
def invite_mode(relay: Relay) -> Iterator[InviteStore]:
    """The relay in invite mode, as `cmdeploy registration invite` sets it; open again after."""
    directory = relay.config.registration_path
    registration.write_state(directory, "invite", None)
    registration.write_public(directory, SettingsReader(relay.config).current())
    try:
        yield InviteStore(directory)
    finally:
        registration.clear_state(directory)
        (directory / registration.PUBLIC_FILE).unlink()


def test_new_in_invite_mode_through_fcgiwrap(relay: Relay, invite_mode: InviteStore) -> None:
    public = request(relay, "GET", "/registration.json")
    assert (public.status, json.loads(public.body)) == (200, {"registration": "invite"})
    assert public.headers["Cache-Control"] == "no-store"
    token, _ = invite_mode.create(1, 3600, time.time())
    without = request(relay, "POST", "/new", source="127.0.0.6")
    assert (without.status, without.text) == (403, newemail.REFUSALS[registration.MISSING] + "\n")
    reply = request(relay, "POST", f"/new?token={token}", source="127.0.0.6")
    assert reply.status == 200, reply.text
    assert invite_mode.handed_out(json.loads(reply.body)["email"])
    again = request(relay, "POST", f"/new?token={token}", source="127.0.0.6")
    assert (again.status, again.text) == (403, newemail.REFUSALS[registration.USED_UP] + "\n")
    # the token is a secret: the access log has the path without its query
    marker = f"/token-probe-{relay.case}"
    request(relay, "GET", marker, source="127.0.0.6")
    wait_until(lambda: relay.log.exists() and marker in relay.log.read_text(), "the probe")
    for path in relay.log.parent.iterdir():
        assert token not in path.read_text(errors="replace"), f"invite token in {path.name}"
    assert '"POST /new HTTP/1.1" 403' in relay.log.read_text()


def test_new_is_limited_per_client_only_when_self_signed(relay: Relay) -> None:
    # All at once, so that the CGI's speed cannot let the bucket refill in between.
    def get_new(_: int) -> int:
        return request(relay, "GET", "/new", source="127.0.0.4").status

    with ThreadPoolExecutor(max_workers=12) as pool:
        statuses = sorted(pool.map(get_new, range(12)))
    if relay.config.tls_mode == "self":
        # 2 r/s with a burst of 5: six pass at once, then the client is held back ...
        assert set(statuses) == {200, 429} and statuses.count(200) >= 6, statuses
        # ... while another client is not
        assert request(relay, "GET", "/new", source="127.0.0.5").status == 200
    else:
        assert statuses == [301] * 12


def test_ipv6_listeners_answer_unless_disabled(relay: Relay) -> None:
    plain = request(relay, "GET", "/", https=False, ipv6=True)
    if relay.config.disable_ipv6:
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("::1", relay.sockets.https), timeout=5).close()
        # only the operator's default site listens on IPv6 port 80
        assert (plain.status, plain.text) == (200, "operator's own site\n")
        return
    assert request(relay, "GET", "/robots.txt", ipv6=True).status == 200
    assert plain.status == 301


def test_logs_hold_no_client_address(relay: Relay) -> None:
    client = "127.0.0.9"
    marker = f"/privacy-probe-{relay.case}"
    request(relay, "GET", marker, source=client)
    request(relay, "GET", marker, https=False, source=client)
    request(relay, "POST", "/new", source=client)
    request(relay, "POST", "/mxdeliv", headers=[("X-MAIL-TO", "a@b")], body=b"x", source=client)
    banner(relay, ["imap"], source=client)
    with socket.create_connection(
        ("127.0.0.1", relay.sockets.https), timeout=10, source_address=(client, 0)
    ) as junk:
        junk.sendall(b"not tls at all\r\n\r\n")  # an error for the multiplexer
        with contextlib.suppress(OSError):
            junk.recv(100)

    def logged() -> bool:
        return relay.log.exists() and relay.log.read_text().count(marker) == 2

    wait_until(logged, "both probes in the access log")
    logs = {path.name: path.read_text(errors="replace") for path in relay.log.parent.iterdir()}
    for name, text in logs.items():
        assert client not in text, f"client address in {name}"
    # Debian's http-level access_log (with $remote_addr) sees nothing of our servers
    assert marker not in logs["access.log"]
    assert f'{relay.domain} "GET {marker} HTTP/1.1" 404' in logs["chatmail.log"]
