"""The app-update catalogue: its shape, the bundled default, and the operator's file."""

from __future__ import annotations

import json
import os
import tomllib
from pathlib import Path
from typing import Any

import pytest

from chatmaild import appversions
from chatmaild.appversions import AppVersions, CatalogueError, bundled_path, compact

HERE = Path(__file__).parent
SOURCE = {
    "sourceId": "gplay",
    "versionInteger": 781,
    "versionString": "2.22.0",
    "downloadUrl": "https://github.com/deltachat/deltachat-android/releases/latest",
}


def catalogue(**source_changes: Any) -> dict[str, Any]:
    source = {k: v for k, v in {**SOURCE, **source_changes}.items() if v is not None}
    return {"clients": [{"clientId": "deltachat", "sources": [source]}]}


def test_bundled_catalogue_is_valid_and_points_at_delta_chat() -> None:
    line = compact(bundled_path().read_text())
    assert "\n" not in line and ": " not in line and ", " not in line  # compact, one line
    parsed = json.loads(line)
    sources = [s for client in parsed["clients"] for s in client["sources"]]
    assert sources
    for source in sources:
        url = source["downloadUrl"]
        assert url.startswith(("https://github.com/deltachat/", "https://download.delta.chat/"))


def test_bundled_catalogue_is_package_data() -> None:
    """The wheel a relay installs carries it (setuptools installs only listed data files)."""
    pyproject = tomllib.loads((HERE.parent / "pyproject.toml").read_text())
    assert appversions.BUNDLED in pyproject["tool"]["setuptools"]["package-data"]["chatmaild"]
    assert bundled_path().parent == Path(appversions.__file__).parent


def test_compact_keeps_the_content() -> None:
    text = json.dumps(catalogue(), indent=4)
    assert json.loads(compact(text)) == catalogue()
    assert compact('{"clients": []}') == '{"clients":[]}'


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("not json", "not JSON"),
        ("[" * 10000 + "]" * 10000, "nested too deeply"),
        ('{"clients": [NaN]}', "not JSON"),
        ("[]", "catalogue: expected an object"),
        ("{}", "catalogue.clients: expected a list"),
        ('{"clients": [], "extra": 1}', "unknown key 'extra'"),
        (json.dumps({"clients": [{"clientId": "", "sources": []}]}), "clientId"),
        (json.dumps({"clients": [{"clientId": "x"}]}), "clients[0].sources: expected a list"),
        (
            json.dumps({"clients": [{"clientId": "x", "sources": []}] * 2}),
            "clients[1].clientId: given twice",
        ),
        (
            json.dumps({"clients": [{"clientId": "x", "sources": [SOURCE, SOURCE]}]}),
            "sources[1].sourceId: given twice",
        ),
        (json.dumps(catalogue(sourceId=" ")), "sourceId: expected a non-empty string"),
        (json.dumps(catalogue(versionInteger=-1)), "versionInteger"),
        (json.dumps(catalogue(versionInteger=2**32)), "versionInteger"),
        (json.dumps(catalogue(versionInteger=781.0)), "versionInteger"),
        (json.dumps(catalogue(versionInteger="781")), "versionInteger"),
        (json.dumps(catalogue(versionInteger=True)), "versionInteger"),
        (json.dumps(catalogue(versionString=None)), "versionString"),
        (json.dumps(catalogue(downloadUrl="http://example.org/app.apk")), "an https URL"),
        (json.dumps(catalogue(downloadUrl="https:///app.apk")), "an https URL"),
        (json.dumps(catalogue(downloadUrl="https://[::1/app.apk")), "an https URL"),
        (json.dumps(catalogue(downloadURL="https://example.org/")), "unknown key 'downloadURL'"),
    ],
)
def test_shapes_delta_chat_would_misread_are_refused(text: str, words: str) -> None:
    with pytest.raises(CatalogueError) as excinfo:
        compact(text)
    assert words in str(excinfo.value)


def test_the_largest_version_integer_is_taken() -> None:
    assert json.loads(compact(json.dumps(catalogue(versionInteger=2**32 - 1))))


def write(path: Path, text: str | bytes, mtime_ns: int) -> None:
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    os.utime(path, ns=(mtime_ns, mtime_ns))


def test_operator_file_is_read_again_when_it_changes(tmp_path: Path) -> None:
    path = tmp_path / "appversions.json"
    write(path, json.dumps(catalogue()), 1_000_000_000)
    entry = AppVersions(path)
    assert json.loads(entry.value() or "") == catalogue()
    newer = catalogue(versionInteger=782, versionString="2.22.1")
    write(path, json.dumps(newer), 2_000_000_000)
    assert json.loads(entry.value() or "") == newer


def test_unchanged_file_is_not_read_again(tmp_path: Path) -> None:
    """Each lookup costs one stat(), not a read and a parse."""
    path = tmp_path / "appversions.json"
    text = json.dumps(catalogue())
    write(path, text, 1_000_000_000)
    entry = AppVersions(path)
    first = entry.value()
    write(path, text.replace("2.22.0", "9.99.9"), 1_000_000_000)  # same size, inode, mtime
    assert entry.value() == first


@pytest.mark.parametrize(
    "content",
    [
        b'{"clients": [{"clientId": "secret-marker-7", "sources": 5}]}',
        b"secret-marker-7 is not json",
        b"\xff\xfesecret-marker-7",
        b"[" * 8000 + b'"secret-marker-7"' + b"]" * 8000,
        b'{"clients": ["' + b"secret-marker-7" * 2000 + b'"]}',
    ],
)
def test_broken_file_one_log_line_without_content_and_no_entry(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, content: bytes
) -> None:
    path = tmp_path / "appversions.json"
    write(path, content, 1_000_000_000)
    entry = AppVersions(path)
    with caplog.at_level("INFO"):
        assert entry.value() is None
        assert entry.value() is None  # asked again, unchanged: no second line
    assert len(caplog.records) == 1, caplog.text
    assert "appversions_file unusable" in caplog.text
    assert "secret-marker" not in caplog.text
    write(path, json.dumps(catalogue()), 2_000_000_000)  # the operator mends it
    assert json.loads(entry.value() or "") == catalogue()


def test_missing_file_no_entry_until_it_appears(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "appversions.json"
    entry = AppVersions(path)
    assert entry.value() is None
    assert entry.value() is None
    assert len(caplog.records) == 1 and "cannot be read" in caplog.text
    write(path, json.dumps(catalogue()), 1_000_000_000)
    assert json.loads(entry.value() or "") == catalogue()
