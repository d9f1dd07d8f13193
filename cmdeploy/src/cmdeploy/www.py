"""The relay's web pages, built on the operator's machine.

`www/src/*.md` become HTML pages inside `www/src/page-layout.html`; every other file under
`www/src/` (style sheet, logo, `dclogin.js`, `robots.txt`) is copied unchanged. Each page is
rendered with Jinja2 repeatedly until the output stops changing, so page text may use
`{{ config.<key> }}` and the helpers of `page_variables`. In acme and external TLS mode the build
adds `qr-chatmail-invite-<domain>.png`, a QR code of `DCACCOUNT:https://<domain>/new`
(doc/contract.md §8.3); in self-signed mode the home page loads `dclogin.js` instead, which
asks `/new` for a `dclogin:` link and draws its QR code in the browser. The home page's
"Join" section holds a part for each registration mode (doc/accounts.md); `style.css` shows
the one named by the section's `data-mode`, which is chatmail.ini's `registration` and which
`registration.js` updates from `/registration.json` when `cmdeploy registration` changed it at
run time. So an invite-only or closed relay shows no QR code that cannot work.

The deploy uploads the built folder; `cmdeploy webdev` uses `watch_and_rebuild` and
`open_browser` to show the pages locally while they are edited.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import struct
import sys
import threading
import webbrowser
import zlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jinja2
import markdown  # type: ignore[import-untyped]
import segno
from markupsafe import Markup

from chatmaild.config import Config
from chatmaild.expire import LARGE_MESSAGE_SIZE
from chatmaild.newemail import account_url

log = logging.getLogger(__name__)

LAYOUT = "page-layout.html"
BUILD_MARKER = ".cmdeploy-www-build"  # lets a rebuild empty the folder it made before
MAX_PASSES = 10
QR_SIZE = 384
QUIET_ZONE = 4  # modules of white around a QR code, as ISO/IEC 18004 asks
LOGO_SHARE = 0.22  # logo width / symbol width: about 5 % of the modules, level H repairs 30 %
LOGO_BLUE = (43, 108, 176)  # the blue of logo.svg

# "extra" without attr_list, which would read a trailing `{% endif %}` as an attribute list
MARKDOWN_EXTENSIONS = (
    *("abbr", "def_list", "fenced_code", "footnotes", "md_in_html", "tables"),
    "sane_lists",
)
NUMBER_WORDS = "zero one two three four five six seven eight nine ten eleven twelve".split()
_CONFLICT_RE = re.compile(r"^(<{7}|>{7}|\|{7})( |$)", re.MULTILINE)
# markdown wraps a line that holds only `{% ... %}` in a paragraph; the tag needs none
_TAG_PARAGRAPH_RE = re.compile(r"<p>\s*(\{%(?:(?!%\}).)*%\})\s*</p>", re.DOTALL)
_TITLE_RE = re.compile(r"^#\s+(.+?)\s*#*\s*$", re.MULTILINE)


class WebsiteError(Exception):
    """The pages cannot be built; the message names the file and what is wrong."""


# --- helpers for page text ------------------------------------------------------------------


def number_word(n: int) -> str:
    """`9` -> `nine` for 0..12 (how prose writes small numbers), digits beyond."""
    return NUMBER_WORDS[n] if 0 <= n < len(NUMBER_WORDS) else str(n)


def human_size(n: int) -> str:
    """Bytes in binary units, as Dovecot counts them: `524288000` -> `500 MiB`."""
    for unit, factor in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= factor:
            value = f"{n / factor:.1f}".removesuffix(".0")
            return f"{value} {unit}"
    return plural(n, "byte")


def plural(n: int, word: str) -> str:
    """`plural(1, "day")` -> `1 day`, `plural(20, "day")` -> `20 days`."""
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def qr_filename(config: Config) -> str:
    return f"qr-chatmail-invite-{config.mail_domain}.png"


def page_variables(
    config: Config, *, source_url: str | None = None, live_reload: bool = False
) -> dict[str, Any]:
    """What page text and the layout may use besides `pagename`, `title` and `content`."""
    self_signed = config.tls_mode == "self"
    return {
        "config": config,
        "username_min_length": number_word(config.username_min_length),
        "username_max_length": number_word(config.username_max_length),
        "password_min_length": number_word(config.password_min_length),
        "human_size": human_size,
        "plural": plural,
        "mailbox_size": human_size(config.max_mailbox_size),
        "message_size": human_size(config.max_message_size),
        "large_message_size": f"{LARGE_MESSAGE_SIZE // 1000} kB",
        "self_signed": self_signed,
        "invite_url": account_url(config),
        "invite_qr": "" if self_signed else qr_filename(config),
        "has_privacy_contact": bool(config.privacy_postal or config.privacy_mail),
        "source_url": source_url or "",
        "live_reload": live_reload,
    }


# --- building ---------------------------------------------------------------------------------


def check_conflict_markers(paths: Sequence[Path]) -> None:
    """Refuse sources left half-merged by git: their pages would show the markers."""
    for path in paths:
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue  # an image or other binary asset
        match = _CONFLICT_RE.search(text)
        if match:
            line = text.count("\n", 0, match.start()) + 1
            raise WebsiteError(
                f"{path}:{line}: git merge-conflict marker {match.group(1)!r}; "
                "resolve the conflict before building the web pages"
            )


def render_page(
    env: jinja2.Environment, layout: str, source: str, variables: Mapping[str, Any]
) -> str:
    """One markdown page inside the layout, rendered until the output stops changing."""
    body = markdown.markdown(source, extensions=list(MARKDOWN_EXTENSIONS), output_format="html")
    body = _TAG_PARAGRAPH_RE.sub(r"\1", body)
    title = _TITLE_RE.search(source)
    text = env.from_string(layout).render(
        variables, content=Markup(body), title=title.group(1) if title else ""
    )
    for _ in range(MAX_PASSES):
        again = env.from_string(text).render(variables)
        if again == text:
            return text
        text = again
    raise WebsiteError(f"page text still changes after {MAX_PASSES} Jinja2 passes")


def build_site(
    config: Config,
    src: Path,
    dest: Path,
    *,
    source_url: str | None = None,
    live_reload: bool = False,
) -> list[Path]:
    """Build the pages of `src` into `dest`; return the files written, sorted.

    Everything is rendered before `dest` is touched, so a broken source leaves the previous
    build in place. `dest` is emptied first, but only if it is empty or a previous build.
    `live_reload` makes every page reload itself (for `cmdeploy webdev`).
    """
    src, dest = src.resolve(), dest.resolve()
    if dest == src or src in dest.parents or dest in src.parents:
        raise WebsiteError(f"{dest}: the build folder must lie outside {src}")
    layout_path = src / LAYOUT
    if not layout_path.is_file():
        raise WebsiteError(f"{layout_path}: missing (the layout every page is rendered into)")
    sources = [p for p in sorted(src.rglob("*")) if p.is_file() and not _hidden(p, src)]
    check_conflict_markers(sources)

    env = jinja2.Environment(
        undefined=jinja2.StrictUndefined, autoescape=True, keep_trailing_newline=True
    )
    variables = page_variables(config, source_url=source_url, live_reload=live_reload)
    layout = layout_path.read_text(encoding="utf-8")
    outputs: dict[str, bytes] = {}
    for path in sources:
        name = path.relative_to(src).as_posix()
        if path == layout_path:
            continue
        if path.suffix == ".md" and path.parent == src:
            pagename = "home" if path.stem == "index" else path.stem
            try:
                html = render_page(
                    env,
                    layout,
                    path.read_text(encoding="utf-8"),
                    {**variables, "pagename": pagename},
                )
            except (jinja2.TemplateError, WebsiteError) as e:
                raise WebsiteError(f"{path}: {type(e).__name__}: {e}") from None
            outputs[f"{path.stem}.html"] = html.encode("utf-8")
        else:
            outputs[name] = path.read_bytes()
    if config.tls_mode != "self":
        outputs[qr_filename(config)] = qr_png(account_url(config))

    _empty_build_folder(dest)
    written = []
    for name, data in outputs.items():
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        written.append(target)
    (dest / BUILD_MARKER).write_text("built by cmdeploy; emptied on the next build\n")
    return sorted(written)


def _hidden(path: Path, src: Path) -> bool:
    """Dot files (.git, vim swap files) and emacs backups are neither built nor copied."""
    parts = path.relative_to(src).parts
    return any(part.startswith((".", "#")) or part.endswith("~") for part in parts)


def _empty_build_folder(dest: Path) -> None:
    if dest.exists():
        if not dest.is_dir() or (any(dest.iterdir()) and not (dest / BUILD_MARKER).exists()):
            raise WebsiteError(
                f"{dest}: exists and is not a previous build; remove it or build elsewhere"
            )
        shutil.rmtree(dest)
    dest.mkdir(parents=True)


# --- the invitation QR code -----------------------------------------------------------------


def qr_png(text: str, size: int = QR_SIZE) -> bytes:
    """A QR code of `text` (error correction level H) with the logo in its centre, as PNG."""
    symbol = segno.make(text, error="h", micro=False, boost_error=False)
    return matrix_png([list(row) for row in symbol.matrix], size, logo=True)


def matrix_png(matrix: Sequence[Sequence[int]], size: int, *, logo: bool = False) -> bytes:
    """Draw a module matrix (1 = dark) as a square PNG of at least `size` pixels."""
    n = len(matrix)
    scale = max(1, size // (n + 2 * QUIET_ZONE))
    size = max(size, scale * (n + 2 * QUIET_ZONE))
    offset = (size - scale * n) // 2
    white, black = b"\xff\xff\xff" * scale, b"\x00\x00\x00" * scale
    margin = b"\xff\xff\xff" * offset
    blank = b"\xff\xff\xff" * size
    rows = [bytearray(blank) for _ in range(offset)]
    for modules in matrix:
        line = margin + b"".join(black if dark else white for dark in modules)
        line += b"\xff\xff\xff" * (size - len(line) // 3)
        rows += [bytearray(line) for _ in range(scale)]
    rows += [bytearray(blank) for _ in range(size - len(rows))]
    if logo:
        _draw_logo(rows, size, round(n * LOGO_SHARE) * scale)
    return _png(size, size, rows)


def _draw_logo(rows: list[bytearray], size: int, box: int) -> None:
    """logo.svg on a white square in the middle, 4x4 supersampled for smooth edges."""
    start = (size - box) // 2
    pad = box * 0.1
    unit = (box - 2 * pad) / 64  # logo.svg's view box is 64 x 64
    offsets = [(i + 0.5) / 4 for i in range(4)]
    for y in range(start, start + box):
        for x in range(start, start + box):
            hits = sum(
                _logo_ink((x - start + dx - pad) / unit, (y - start + dy - pad) / unit)
                for dy in offsets
                for dx in offsets
            )
            rows[y][3 * x : 3 * x + 3] = bytes(
                round(255 + (ink - 255) * hits / 16) for ink in LOGO_BLUE
            )


def _logo_ink(u: float, v: float) -> bool:
    """Is (u, v) blue in logo.svg? A speech bubble (circle and tail) around a keyhole."""
    bubble = (u - 32) ** 2 + (v - 30) ** 2 <= 26**2 or _in_triangle(u, v, (8, 40, 4, 60, 24, 52))
    keyhole = (u - 32) ** 2 + (v - 25) ** 2 <= 7.5**2 or (
        28 <= v <= 42 and abs(u - 32) <= 3.5 + (v - 28) * 2.5 / 14
    )
    return bubble and not keyhole


def _in_triangle(u: float, v: float, corners: tuple[float, ...]) -> bool:
    ax, ay, bx, by, cx, cy = corners
    d1 = (u - bx) * (ay - by) - (ax - bx) * (v - by)
    d2 = (u - cx) * (by - cy) - (bx - cx) * (v - cy)
    d3 = (u - ax) * (cy - ay) - (cx - ax) * (v - ay)
    return not ((d1 < 0 or d2 < 0 or d3 < 0) and (d1 > 0 or d2 > 0 or d3 > 0))


def _png(width: int, height: int, rows: Sequence[bytes | bytearray]) -> bytes:
    """An 8-bit RGB PNG (RFC 2083) with unfiltered scanlines."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    pixels = zlib.compress(b"".join(b"\x00" + bytes(row) for row in rows), 9)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")
    )


# --- cmdeploy webdev --------------------------------------------------------------------------

Snapshot = dict[Path, tuple[int, int]]


def _snapshot(src: Path) -> Snapshot:
    files: Snapshot = {}
    for path in src.rglob("*"):
        if _hidden(path, src):
            continue
        try:
            stat = path.stat()
        except OSError:
            continue  # removed while we looked
        if path.is_file():
            files[path] = (stat.st_mtime_ns, stat.st_size)
    return files


def watch_and_rebuild(
    config: Config,
    src: Path,
    dest: Path,
    interval: float = 1.0,
    stop: threading.Event | None = None,
    on_build: Callable[[list[Path]], None] | None = None,
    *,
    debounce: float = 0.5,
    build_first: bool = True,
    on_error: Callable[[WebsiteError], None] | None = None,
    source_url: str | None = None,
) -> None:
    """Build, then poll the mtimes under `src` every `interval` seconds and rebuild on change.

    A change is built once the sources have stayed the same for `debounce` seconds (an editor
    may save in several steps). A failed build is reported to `on_error` (default: logged) and
    the loop goes on. Returns when `stop` is set; without one it runs until interrupted.
    """
    stop = stop or threading.Event()

    def build() -> None:
        try:
            written = build_site(config, src, dest, source_url=source_url, live_reload=True)
        except (WebsiteError, OSError) as e:
            error = e if isinstance(e, WebsiteError) else WebsiteError(f"{src}: {e}")
            if on_error:
                on_error(error)
            else:
                log.error("%s", error)
            return
        if on_build:
            on_build(written)

    seen = _snapshot(src)
    if build_first:
        build()
    while not stop.wait(interval):
        current = _snapshot(src)
        if current == seen:
            continue
        while not stop.wait(debounce):
            settled = _snapshot(src)
            if settled == current:
                break
            current = settled
        else:
            return
        seen = current
        build()


def open_browser(
    path: Path, environ: Mapping[str, str] | None = None, platform: str | None = None
) -> bool:
    """Open `path` in a graphical browser if this machine has a display; False if not.

    Without a display `webbrowser` would fall back to a text browser in this terminal."""
    environ = os.environ if environ is None else environ
    platform = sys.platform if platform is None else platform
    has_display = platform in ("darwin", "win32") or bool(
        environ.get("DISPLAY") or environ.get("WAYLAND_DISPLAY")
    )
    if not has_display:
        return False
    return webbrowser.open(path.resolve().as_uri())
