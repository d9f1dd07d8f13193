"""The web pages: built from the real `www/src` for each TLS mode.

QR codes are checked by decoding them with zbar's `zbarimg`, the ones `dclogin.js` draws by
running its encoder in Node.js, and the whole self-signed invitation flow in headless Chromium
against a local server whose `/new` is answered by `chatmaild.newemail`. zbar is required;
without Node.js or Chromium only the tests that need them are skipped.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import segno

from chatmaild.config import Config
from chatmaild.newemail import dclogin_url, respond
from cmdeploy import www
from cmdeploy.www import WebsiteError, build_site, watch_and_rebuild

SRC = Path(__file__).resolve().parents[2] / "www" / "src"
PAGES = ("index.html", "info.html", "policy.html")
ENCRYPTION_STATEMENT = "only carries end-to-end encrypted mail"

needs_node = pytest.mark.skipif(not shutil.which("node"), reason="node (Node.js) missing")
needs_chromium = pytest.mark.skipif(not shutil.which("chromium"), reason="chromium missing")

MODES = {
    "acme": {"mail_domain": "chat.example.org"},
    "external": {
        "mail_domain": "chat.example.org",
        "tls_external_cert_and_key": "/etc/ssl/relay.pem /etc/ssl/relay.key",
    },
    "self": {"mail_domain": "_chat.example.org"},
    "ipv4": {"mail_domain": "192.0.2.10"},
}
PRIVACY = {
    "privacy_postal": "Relay Ops & Sons <GmbH>\nExample Street 1\n12345 Sample Town",
    "privacy_mail": "privacy@example.org",
    "privacy_pdo": "Dana Protector, dpo@example.org",
    "privacy_supervisor": "Sample Town Data Protection Commissioner",
}


def make_config(mode: str = "acme", **params: str) -> Config:
    return Config.from_params({**MODES[mode], **params})


def build(tmp_path: Path, config: Config, src: Path = SRC) -> Path:
    dest = tmp_path / "build"
    build_site(config, src, dest)
    return dest


def read_pages(dest: Path) -> dict[str, str]:
    return {name: (dest / name).read_text(encoding="utf-8") for name in PAGES}


def zbar(image: Path) -> str:
    """The text of the one QR code in `image`; zbar-tools is a test dependency, never skipped."""
    result = subprocess.run(
        ["zbarimg", "--raw", "-q", str(image)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, f"no QR code found in {image}"
    return result.stdout.removesuffix("\n")


def copy_src(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    shutil.copytree(SRC, src)
    return src


# --- the pages in every mode ------------------------------------------------------------------


@pytest.mark.parametrize("privacy", [False, True], ids=["no-privacy", "privacy"])
@pytest.mark.parametrize("mode", list(MODES))
def test_pages_exist_link_each_other_and_are_fully_rendered(
    tmp_path: Path, mode: str, privacy: bool
) -> None:
    config = make_config(mode, **(PRIVACY if privacy else {}))
    dest = build(tmp_path, config)
    for name in ("robots.txt", "style.css", "logo.svg", "dclogin.js"):
        assert (dest / name).read_bytes() == (SRC / name).read_bytes()
    assert not (dest / "page-layout.html").exists()
    assert not list(dest.glob("*.md"))
    for name, html in read_pages(dest).items():
        assert html.startswith("<!DOCTYPE html>")
        assert '<meta name="viewport"' in html
        for other in PAGES:
            assert f'href="{other}"' in html, f"{name} does not link {other}"
        assert ENCRYPTION_STATEMENT in html
        assert config.mail_domain in html
        for leftover in ("{{", "}}", "{%", "%}", "{#", "<p></p>"):
            assert leftover not in html, f"{name} holds {leftover!r}"
    robots = (dest / "robots.txt").read_text()
    assert "User-agent: *" in robots and "Disallow: /" in robots


def test_home_page_says_what_a_relay_is_and_how_to_join(tmp_path: Path) -> None:
    html = read_pages(build(tmp_path, make_config()))["index.html"]
    assert "chatmail relay" in html
    assert "This relay only carries end-to-end encrypted mail." in html
    assert "Delta Chat" in html
    assert "nine random letters and digits" in html  # username_max_length as a word


def test_limits_come_from_the_config(tmp_path: Path) -> None:
    config = make_config(
        delete_mails_after="13",
        delete_large_after="3",
        delete_inactive_users_after="45",
        max_mailbox_size="2G",
        max_message_size="10M",
        max_user_send_per_minute="30",
        max_user_send_burst_size="4",
    )
    pages = read_pages(build(tmp_path, config))
    index, info, policy = pages["index.html"], pages["info.html"], pages["policy.html"]
    for html in (index, info):
        assert "30 messages a minute" in html
        assert "2 GiB" in html and "10 MiB" in html
        assert "200 kB" in html
    for html in (index, info, policy):
        assert "13 days" in html and "45 days" in html and "3 days" in html
        assert "20 days" not in html  # the default of delete_mails_after


def test_one_day_is_singular(tmp_path: Path) -> None:
    index = read_pages(build(tmp_path, make_config(delete_mails_after="1")))["index.html"]
    assert "after 1 day\n" in index or "after 1 day " in index
    assert "1 days" not in index


def test_name_lengths_as_words(tmp_path: Path) -> None:
    config = make_config(
        username_min_length="6", username_max_length="12", password_min_length="13"
    )
    info = read_pages(build(tmp_path, config))["info.html"]
    assert re.search(r"six to\s+twelve\s+characters long", info)
    assert "at least 13 characters" in info


def test_equal_name_lengths_say_exactly(tmp_path: Path) -> None:
    info = read_pages(build(tmp_path, make_config()))["info.html"]
    assert re.search(r"exactly\s+nine\s+characters long", info)


def test_privacy_policy_names_the_contacts_escaped(tmp_path: Path) -> None:
    policy = read_pages(build(tmp_path, make_config(**PRIVACY)))["policy.html"]
    assert "Relay Ops &amp; Sons &lt;GmbH&gt;" in policy  # autoescaped, not raw HTML
    assert "<GmbH>" not in policy
    assert 'href="mailto:privacy@example.org"' in policy
    assert "Dana Protector" in policy
    assert "Sample Town Data Protection Commissioner" in policy
    assert "not published contact details" not in policy
    for section in ("Who is responsible", "What is stored", "Your rights", "Complaints"):
        assert section in policy
    assert "No IP addresses" in policy and "password" in policy and "tokens" in policy


def test_privacy_policy_without_contacts_says_so(tmp_path: Path) -> None:
    pages = read_pages(build(tmp_path, make_config()))
    assert "has not published contact details" in pages["policy.html"]
    assert "has not published contact details" in pages["index.html"]
    assert "mailto:" not in pages["policy.html"]
    assert re.search(r"the one where you\s+live or work", pages["policy.html"])


# --- invitation: DCACCOUNT QR code or dclogin.js -----------------------------------------------


@pytest.mark.parametrize("mode", ["acme", "external"])
def test_invitation_qr_decodes_to_the_dcaccount_url(tmp_path: Path, mode: str) -> None:
    dest = build(tmp_path, make_config(mode))
    qr = dest / "qr-chatmail-invite-chat.example.org.png"
    assert zbar(qr) == "DCACCOUNT:https://chat.example.org/new"
    width, height = struct.unpack(">II", qr.read_bytes()[16:24])
    assert (width, height) == (384, 384)
    index = read_pages(dest)["index.html"]
    assert 'href="DCACCOUNT:https://chat.example.org/new"' in index
    assert 'src="qr-chatmail-invite-chat.example.org.png"' in index
    assert "dclogin.js" not in index


@pytest.mark.parametrize("mode", ["self", "ipv4"])
def test_self_signed_home_page_uses_dclogin_and_has_no_dcaccount(tmp_path: Path, mode: str) -> None:
    dest = build(tmp_path, make_config(mode))
    assert not list(dest.glob("*.png"))
    index = read_pages(dest)["index.html"]
    assert '<script defer src="dclogin.js"></script>' in index
    assert 'id="dclogin"' in index
    assert "DCACCOUNT" not in index.upper()


def test_qr_png_survives_a_long_domain(tmp_path: Path) -> None:
    url = "DCACCOUNT:https://a-rather-long-relay-name.subdomain.of.some-operator.example.org/new"
    image = tmp_path / "qr.png"
    image.write_bytes(www.qr_png(url))
    assert zbar(image) == url


# --- the dclogin.js encoder -------------------------------------------------------------------


def js_encode(texts: list[str]) -> list[list[list[int]]]:
    script = (
        f"const QR = require({json.dumps(str(SRC / 'dclogin.js'))});"
        "const texts = JSON.parse(require('fs').readFileSync(0, 'utf8'));"
        "process.stdout.write(JSON.stringify(texts.map(QR.encode)));"
    )
    result = subprocess.run(
        ["node", "-e", script], input=json.dumps(texts), capture_output=True, text=True, check=True
    )
    matrices: list[list[list[int]]] = json.loads(result.stdout)
    return matrices


@needs_node
def test_dclogin_js_qr_encoder_decodes_across_versions(tmp_path: Path) -> None:
    config = make_config("ipv4")
    texts = [
        dclogin_url("abc123xyz@[192.0.2.10]", "Ab!c?def+12&=", config),
        dclogin_url("k2m9q1z7w@_chat.example.org", "p4ss#w0rd;:.", make_config("self")),
        # byte capacities of level M at version boundaries: 1, 7 (version info), 10 (16-bit
        # length), 15, 32 (irregular alignment spacing), 40
        *("x" * n for n in (1, 14, 15, 122, 123, 213, 214, 412, 1538, 2331)),
    ]
    for text, matrix in zip(texts, js_encode(texts), strict=True):
        version = (len(matrix) - 17) // 4
        expected = segno.make(text, error="m", mode="byte", boost_error=False, micro=False)
        assert version == expected.version, text
        image = tmp_path / f"v{version}.png"
        image.write_bytes(www.matrix_png(matrix, 4 * (len(matrix) + 8)))
        assert zbar(image) == text


# --- refusals and rendering rules -------------------------------------------------------------


@pytest.mark.parametrize("marker", ["<<<<<<< HEAD", ">>>>>>> feature", "|||||||"])
def test_conflict_markers_refuse_the_build(tmp_path: Path, marker: str) -> None:
    src = copy_src(tmp_path)
    info = src / "info.md"
    lines = info.read_text().splitlines()
    info.write_text("\n".join([*lines[:3], marker, *lines[3:]]) + "\n")
    dest = tmp_path / "build"
    with pytest.raises(WebsiteError, match=r"info\.md:4: git merge-conflict marker"):
        build_site(make_config(), src, dest)
    assert not dest.exists()


def test_a_setext_heading_is_no_conflict_marker(tmp_path: Path) -> None:
    src = copy_src(tmp_path)
    (src / "extra.md").write_text("Title\n=======\n\nText.\n")
    assert "<h1>Title</h1>" in (build(tmp_path, make_config(), src) / "extra.html").read_text()


def test_unknown_variable_names_the_page(tmp_path: Path) -> None:
    src = copy_src(tmp_path)
    (src / "info.md").write_text("# Info\n\n{{ config.no_such_key }}\n")
    with pytest.raises(WebsiteError, match=r"info\.md: UndefinedError"):
        build_site(make_config(), src, tmp_path / "build")


def test_tag_paragraphs_are_unwrapped_but_inline_tags_kept(tmp_path: Path) -> None:
    src = copy_src(tmp_path)
    text = "# T\n\n{% if true %}\n\nShown.\n\n{% endif %}\n\nA {% if true %}b{% endif %} c.\n"
    (src / "tags.md").write_text(text)
    html = (build(tmp_path, make_config(), src) / "tags.html").read_text()
    assert "<p>Shown.</p>" in html and "<p>A b c.</p>" in html and "<p></p>" not in html


def test_rendering_repeats_until_stable(tmp_path: Path) -> None:
    src = copy_src(tmp_path)
    (src / "nested.md").write_text('# Nested\n\nDomain: {{ "{{ config.mail_domain }}" }}\n')
    nested = (build(tmp_path, make_config(), src) / "nested.html").read_text()
    assert "Domain: chat.example.org" in nested
    assert "<title>Nested · chat.example.org</title>" in nested


def test_rebuild_removes_stale_files_but_never_a_foreign_folder(tmp_path: Path) -> None:
    src = copy_src(tmp_path)
    (src / "extra.md").write_text("# Extra\n")
    (src / "img").mkdir()
    (src / "img" / "a.txt").write_text("asset in a sub-folder\n")
    (src / ".info.md.swp").write_text("editor state")
    dest = build(tmp_path, make_config(), src)
    assert (dest / "extra.html").exists() and (dest / "img" / "a.txt").exists()
    assert not (dest / ".info.md.swp").exists()
    (src / "extra.md").unlink()
    written = build_site(make_config(), src, dest)
    assert not (dest / "extra.html").exists()
    assert dest / "index.html" in written

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("mine")
    with pytest.raises(WebsiteError, match="not a previous build"):
        build_site(make_config(), src, foreign)
    assert (foreign / "keep.txt").read_text() == "mine"
    with pytest.raises(WebsiteError, match="outside"):
        build_site(make_config(), src, src / "build")


def test_helpers() -> None:
    assert [www.number_word(n) for n in (0, 9, 12, 13)] == ["zero", "nine", "twelve", "13"]
    assert www.human_size(500 * 2**20) == "500 MiB"
    assert www.human_size(3 * 2**29) == "1.5 GiB"
    assert www.human_size(2**30) == "1 GiB"
    assert www.human_size(1) == "1 byte"
    assert www.plural(1, "day") == "1 day" and www.plural(2, "day") == "2 days"


# --- cmdeploy webdev ------------------------------------------------------------------------


def test_watch_rebuilds_after_a_change_and_survives_a_broken_source(tmp_path: Path) -> None:
    src = copy_src(tmp_path)
    dest = tmp_path / "build"
    info = src / "info.md"
    original = info.read_text()
    stop = threading.Event()
    builds: list[str] = []
    errors: list[str] = []

    def touch(text: str) -> None:
        info.write_text(text)
        stat = info.stat()  # a later mtime even where the clock is coarse
        future = stat.st_mtime_ns + (len(builds) + len(errors) + 1) * 10**9
        os.utime(info, ns=(future, future))

    def on_build(written: list[Path]) -> None:
        html = (dest / "info.html").read_text()
        builds.append(html)
        if len(builds) == 1:
            touch(original.replace("# How", "<<<<<<< HEAD\n# How"))
        else:
            stop.set()

    def on_error(error: WebsiteError) -> None:
        errors.append(str(error))
        touch(original + "\nA new paragraph.\n")

    watcher = threading.Thread(
        target=watch_and_rebuild,
        args=(make_config(), src, dest),
        kwargs={
            "interval": 0.01,
            "debounce": 0.01,
            "stop": stop,
            "on_build": on_build,
            "on_error": on_error,
        },
    )
    watcher.start()
    watcher.join(timeout=30)
    stop.set()
    assert not watcher.is_alive()
    assert len(builds) == 2
    assert "A new paragraph." not in builds[0]
    assert "A new paragraph." in builds[1]
    assert '<meta http-equiv="refresh"' in builds[1]  # webdev pages reload themselves
    assert len(errors) == 1 and "info.md:1: git merge-conflict marker" in errors[0]


def test_watch_returns_at_once_when_stopped(tmp_path: Path) -> None:
    stop = threading.Event()
    stop.set()
    built: list[list[Path]] = []
    watch_and_rebuild(
        make_config(), SRC, tmp_path / "build", interval=60, stop=stop, on_build=built.append
    )
    assert len(built) == 1


def test_open_browser_only_with_a_display(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    opened: list[str] = []

    def fake_open(url: str) -> bool:
        opened.append(url)
        return True

    monkeypatch.setattr(www.webbrowser, "open", fake_open)
    page = tmp_path / "index.html"
    assert www.open_browser(page, environ={}, platform="linux") is False
    assert opened == []
    assert www.open_browser(page, environ={"DISPLAY": ":0"}, platform="linux") is True
    assert www.open_browser(page, environ={}, platform="darwin") is True
    assert opened == [page.resolve().as_uri()] * 2


# --- in a real browser ------------------------------------------------------------------------


Serve = Callable[..., str]


@pytest.fixture
def serve() -> Iterator[Serve]:
    """Serve a built folder on loopback, with `/new` answered by chatmaild.newemail and
    `/registration.json` holding `mode` (none: 404, as before `cmdeploy registration`)."""
    servers: list[ThreadingHTTPServer] = []

    def start(
        directory: Path,
        config: Config,
        credentials: tuple[str, str],
        mode: str | None = None,
        asked: list[str] | None = None,
    ) -> str:
        class Handler(SimpleHTTPRequestHandler):
            def do_GET(self) -> None:
                if asked is not None:
                    asked.append(self.path)
                if self.path == "/registration.json" and mode is not None:
                    body = json.dumps({"registration": mode}).encode()
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.end_headers()
                    self.wfile.write(body)
                    return None
                if self.path != "/new":
                    return super().do_GET()
                answer = respond("GET", config, generate=lambda _: credentials)
                self.send_response(answer.status)
                for name, value in answer.headers:
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(answer.body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=str(directory)))
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def chromium(url: str, *args: str) -> str:
    with tempfile.TemporaryDirectory() as profile:
        result = subprocess.run(
            [
                "chromium",
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--hide-scrollbars",
                f"--user-data-dir={profile}",
                "--window-size=390,1400",  # a phone
                "--virtual-time-budget=10000",
                *args,
                url,
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
    return result.stdout


@needs_chromium
@pytest.mark.parametrize("mode", ["self", "ipv4"])
def test_self_signed_invitation_in_chromium(tmp_path: Path, serve: Serve, mode: str) -> None:
    config = make_config(mode)
    email = f"k2m9q1z7w@{config.address_domain}"
    credentials = (email, "Xy7!pq%2Rst&")
    url = serve(build(tmp_path, config), config, credentials)
    expected = dclogin_url(*credentials, config)

    dom = chromium(url, "--dump-dom")
    assert f'href="{expected.replace("&", "&amp;")}"' in dom
    assert "<svg" in dom and "Asking the relay" not in dom

    shot = tmp_path / "shot.png"
    chromium(url, f"--screenshot={shot}")
    assert zbar(shot) == expected


@needs_chromium
def test_acme_home_page_on_a_phone(tmp_path: Path, serve: Serve) -> None:
    config = make_config()
    url = serve(build(tmp_path, config), config, ("unused@chat.example.org", "unused"))
    shot = tmp_path / "shot.png"
    chromium(url, f"--screenshot={shot}")
    assert zbar(shot) == "DCACCOUNT:https://chat.example.org/new"


def no_qr_code(image: Path) -> bool:
    result = subprocess.run(["zbarimg", "--raw", "-q", str(image)], capture_output=True)
    return result.returncode == 4  # zbarimg: no symbol found


@needs_chromium
@pytest.mark.parametrize("mode", ["invite", "closed"])
def test_a_page_built_for_invite_or_closed_shows_no_qr_code(
    tmp_path: Path, serve: Serve, mode: str
) -> None:
    config = make_config(registration=mode)
    url = serve(build(tmp_path, config), config, ("unused@chat.example.org", "unused"))
    shot = tmp_path / "shot.png"
    chromium(url, f"--screenshot={shot}")
    assert no_qr_code(shot)


@needs_chromium
def test_the_run_time_mode_wins_over_the_built_one(tmp_path: Path, serve: Serve) -> None:
    # built open, then `cmdeploy registration invite`: the QR code that cannot work goes
    config = make_config()
    url = serve(build(tmp_path, config), config, ("unused@chat.example.org", "unused"), "invite")
    dom = chromium(url, "--dump-dom")
    assert 'data-mode="invite"' in dom
    shot = tmp_path / "shot.png"
    chromium(url, f"--screenshot={shot}")
    assert no_qr_code(shot)
    # built invite, then `cmdeploy registration open`: the code is back
    config = make_config(registration="invite")
    url = serve(build(tmp_path / "b", config), config, ("unused@x", "unused"), "open")
    chromium(url, f"--screenshot={shot}")
    assert zbar(shot) == "DCACCOUNT:https://chat.example.org/new"


@needs_chromium
def test_a_self_signed_page_asks_new_only_in_open_mode(tmp_path: Path, serve: Serve) -> None:
    config = make_config("self")
    asked: list[str] = []
    credentials = (f"k2m9q1z7w@{config.address_domain}", "Xy7!pq%2Rst&")
    url = serve(build(tmp_path, config), config, credentials, "invite", asked)
    dom = chromium(url, "--dump-dom")
    assert "/registration.json" in asked and "/new" not in asked
    assert "dclogin:" not in dom
