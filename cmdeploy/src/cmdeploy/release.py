"""The Debian releases a relay is deployed onto, and how the deploy tells them apart.

A relay runs Debian's own packages, and those differ between releases: Debian 12 (bookworm)
ships Dovecot 2.3, Debian 13 (trixie) Dovecot 2.4 with a configuration language of its own
(doc/debian13.md). Pre-flight refuses every other system; the deploy reads the host's
/etc/os-release again (a pyinfra fact) and hands the release's codename to every component
whose packages or files depend on it.
"""

from __future__ import annotations

BOOKWORM = "bookworm"
TRIXIE = "trixie"
# os-release's VERSION_ID -> the codename used throughout the deploy, oldest first
SUPPORTED = {"12": BOOKWORM, "13": TRIXIE}
RELEASES = tuple(SUPPORTED.values())


def parse_os_release(text: str) -> dict[str, str]:
    """The KEY=value lines of os-release(5), quotes removed."""
    values = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            values[key.strip()] = value.strip().strip('"')
    return values


def release_of(os_release: dict[str, str]) -> str | None:
    """The codename of a supported Debian release, None for anything else.

    VERSION_ID, not VERSION_CODENAME: a Debian host always has it, and a derivative that
    copies Debian's codename still says ID=<its own>."""
    if os_release.get("ID") != "debian":
        return None
    return SUPPORTED.get(os_release.get("VERSION_ID", ""))


def describe(release: str) -> str:
    """ "Debian 13 (trixie)" for the summary and error messages."""
    number = next(n for n, name in SUPPORTED.items() if name == release)
    return f"Debian {number} ({release})"


def supported_text() -> str:
    """ "Debian 12 (bookworm) or Debian 13 (trixie)", for messages."""
    return " or ".join(describe(name) for name in RELEASES)
