"""The app-update catalogue served as METADATA `/shared/vendor/deltachat/appversions`.

Delta Chat apps read it to tell their users about a newer version (doc/metadata.md). It is
one line of compact JSON (RFC 8259):

    {"clients": [{"clientId": ..., "sources": [{"sourceId": ..., "versionInteger": ...,
                  "versionString": ..., "downloadUrl": ...}]}]}

The text comes from `appversions_file`, or from the catalogue bundled with chatmaild when
that key is empty. The file is read when the entry is first asked for and again whenever its
modification time (or size, or inode) changes, so an operator replaces it without a restart.
A file that is missing, unreadable, too large, not JSON or not of that shape gives one log
line, naming the first problem and never the file's content, and no entry until it changes.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from .config import is_https_url

log = logging.getLogger("metadata")

BUNDLED = "appversions.json"  # package data of chatmaild
MAX_SIZE = 16 * 1024  # bytes of the file; the compact line is at most this long
MAX_VERSION_INTEGER = 2**32 - 1  # an unsigned 32-bit integer in the client

CLIENT_KEYS = {"clientId", "sources"}
SOURCE_KEYS = {"sourceId", "versionInteger", "versionString", "downloadUrl"}


class CatalogueError(ValueError):
    """The catalogue is not of the expected shape; the text names where, not what."""


def bundled_path() -> Path:
    return Path(str(resources.files("chatmaild").joinpath(BUNDLED)))


def _text(obj: dict[str, Any], key: str, where: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not value.strip():
        raise CatalogueError(f"{where}.{key}: expected a non-empty string")
    return value


def _https_url(obj: dict[str, Any], key: str, where: str) -> None:
    if not is_https_url(_text(obj, key, where)):
        raise CatalogueError(f"{where}.{key}: expected an https URL")


def _exact_keys(obj: object, keys: set[str], where: str) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise CatalogueError(f"{where}: expected an object")
    unknown = sorted(set(obj) - keys)
    if unknown:  # a misspelt key would reach the client as a missing one
        raise CatalogueError(f"{where}: unknown key {unknown[0]!r}")
    return obj


def _list(obj: dict[str, Any], key: str, where: str) -> list[Any]:
    value = obj.get(key)
    if not isinstance(value, list):
        raise CatalogueError(f"{where}.{key}: expected a list")
    return value


def check(catalogue: object) -> None:
    """Raise CatalogueError unless `catalogue` is of the shape Delta Chat reads."""
    top = _exact_keys(catalogue, {"clients"}, "catalogue")
    client_ids: set[str] = set()
    for i, client in enumerate(_list(top, "clients", "catalogue")):
        where = f"clients[{i}]"
        client = _exact_keys(client, CLIENT_KEYS, where)
        client_id = _text(client, "clientId", where)
        if client_id in client_ids:  # a client takes the first; the second would be dead
            raise CatalogueError(f"{where}.clientId: given twice")
        client_ids.add(client_id)
        source_ids: set[str] = set()
        for j, source in enumerate(_list(client, "sources", where)):
            at = f"{where}.sources[{j}]"
            source = _exact_keys(source, SOURCE_KEYS, at)
            source_id = _text(source, "sourceId", at)
            if source_id in source_ids:
                raise CatalogueError(f"{at}.sourceId: given twice")
            source_ids.add(source_id)
            version = source.get("versionInteger")
            if (
                not isinstance(version, int)
                or isinstance(version, bool)
                or not 0 <= version <= MAX_VERSION_INTEGER
            ):
                raise CatalogueError(f"{at}.versionInteger: expected a whole number 0..2^32-1")
            _text(source, "versionString", at)
            _https_url(source, "downloadUrl", at)


def _no_constants(name: str) -> Any:
    raise CatalogueError(f"{name} is not JSON")


def compact(text: str) -> str:
    """The catalogue in `text`, checked, as one line of compact JSON."""
    try:
        catalogue = json.loads(text, parse_constant=_no_constants)
    except json.JSONDecodeError as e:  # its message holds positions only, no content
        raise CatalogueError(f"not JSON ({e.msg}, line {e.lineno} column {e.colno})") from None
    except RecursionError:  # thousands of nested brackets fit in MAX_SIZE
        raise CatalogueError("nested too deeply") from None
    check(catalogue)
    return json.dumps(catalogue, separators=(",", ":"))


@dataclass(frozen=True)
class _Stamp:
    mtime_ns: int
    size: int
    inode: int


class AppVersions:
    """The entry's value from one file, re-read when the file changes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: _Stamp | None = None
        self._value: str | None = None
        self._read_once = False

    def value(self) -> str | None:
        """The compact catalogue, or None while the file is unusable."""
        try:
            st = os.stat(self.path)
            stamp: _Stamp | None = _Stamp(st.st_mtime_ns, st.st_size, st.st_ino)
        except OSError:
            stamp = None
        if self._read_once and stamp == self._stamp:
            return self._value
        self._read_once, self._stamp = True, stamp
        self._value = self._load(stamp)
        return self._value

    def _load(self, stamp: _Stamp | None) -> str | None:
        try:
            if stamp is None:
                raise CatalogueError("the file cannot be read")
            if stamp.size > MAX_SIZE:
                raise CatalogueError(f"larger than {MAX_SIZE} bytes")
            with open(self.path, "rb") as f:
                data = f.read(MAX_SIZE + 1)
            if len(data) > MAX_SIZE:
                raise CatalogueError(f"larger than {MAX_SIZE} bytes")
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError:
                raise CatalogueError("not UTF-8") from None
            return compact(text)
        except OSError:
            problem = "the file cannot be read"
        except CatalogueError as e:
            problem = str(e)
        log.warning("appversions_file unusable, no app versions announced: %s", problem)
        return None
