"""Every document the repository cites is in the repository.

Code, templates, tests and pages cite the relay's contract and the other pages of `doc/` as
"doc/<name>.md §N". These tests read every tracked text file and fail on a citation of a
document that is not here (the old "spec" of another project), of a `doc/` page that does not
exist, or of a section that the cited page does not have.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "doc"

# Spelled in two pieces, so that this file does not match itself.
EXTERNAL_SPEC = ("spec" + " §", "relay" + "-spec")

_DOC_PATH = re.compile(r"\bdoc/([A-Za-z0-9_.-]+\.md)\b")
_RELATIVE_LINK = re.compile(r"\]\(([A-Za-z0-9_.-]+\.md)(?:#[^)]*)?\)")
# "doc/contract.md §2.2", "encryption-gate.md §1.3", "doc/encryption-gate.md §2, §3"
_SECTION_CITE = re.compile(
    r"\b(?:doc/)?([A-Za-z0-9_-]+\.md)\s+§(\d+(?:\.\d+)*)((?:(?:,\s*|\s+and\s+)§\d+(?:\.\d+)*)*)"
)
_MORE_SECTIONS = re.compile(r"§(\d+(?:\.\d+)*)")
_HEADING = re.compile(r"^#{1,6} (\d+(?:\.\d+)*)\s", re.MULTILINE)


@cache
def tracked_text_files() -> dict[str, str]:
    """{path relative to the checkout: text} of every tracked file that is UTF-8 text."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("needs a git checkout")
    listing = subprocess.run(
        ["git", "-C", str(ROOT), "ls-files", "-z"], capture_output=True, check=True
    ).stdout
    files = {}
    for name in listing.decode().split("\0"):
        path = ROOT / name
        if not name or not path.is_file():
            continue
        data = path.read_bytes()
        if b"\0" in data:
            continue
        try:
            files[name] = data.decode("utf-8")
        except UnicodeDecodeError:
            continue
    return files


def lines_with(pattern: re.Pattern[str]) -> list[tuple[str, int, re.Match[str]]]:
    found = []
    for name, text in tracked_text_files().items():
        for number, line in enumerate(text.splitlines(), 1):
            found.extend((name, number, m) for m in pattern.finditer(line))
    return found


def sections(page: Path) -> set[str]:
    """The numbers of a page's numbered headings: "## 2 Accounts" -> "2"."""
    return set(_HEADING.findall(page.read_text(encoding="utf-8")))


def test_nothing_cites_the_spec_of_another_project() -> None:
    wrong = [
        f"{name}:{number}: {line.strip()}"
        for name, text in tracked_text_files().items()
        for number, line in enumerate(text.splitlines(), 1)
        if any(marker in line for marker in EXTERNAL_SPEC)
    ]
    assert not wrong, "cite doc/contract.md §N, another doc/ page or an RFC:\n" + "\n".join(wrong)


def test_every_cited_doc_page_exists() -> None:
    missing = [
        f"{name}:{number}: doc/{m.group(1)}"
        for name, number, m in lines_with(_DOC_PATH)
        if not (DOC / m.group(1)).is_file()
    ]
    # relative links between the pages of doc/
    missing += [
        f"{name}:{number}: {m.group(1)}"
        for name, number, m in lines_with(_RELATIVE_LINK)
        if name.startswith("doc/") and not (DOC / m.group(1)).is_file()
    ]
    assert not missing, "no such page in doc/:\n" + "\n".join(missing)


def test_every_cited_section_exists() -> None:
    missing = []
    for name, number, m in lines_with(_SECTION_CITE):
        page = DOC / m.group(1)
        if not page.is_file():
            continue  # another file of that name, or a missing page (the test above)
        cited = [m.group(2), *_MORE_SECTIONS.findall(m.group(3))]
        have = sections(page)
        missing += [f"{name}:{number}: {m.group(1)} §{s}" for s in cited if s not in have]
    assert not missing, "no such section:\n" + "\n".join(missing)


def test_the_contract_has_numbered_sections() -> None:
    """The page the code cites most: its sections are there to be cited."""
    have = sections(DOC / "contract.md")
    assert {str(n) for n in range(1, 13)} <= have
    assert {"1.2", "2.2", "4.1", "6.1", "7.1", "8.2"} <= have
