"""The chatmail_notify Dovecot plugin (chatmail_notify_plugin.c): its source and how it is built.

The deploy compiles it on the relay against Debian's `dovecot-dev` headers, so it always
matches the Dovecot binaries installed there; the component tests build it the same way for
their private Dovecot. A plugin built for another Dovecot ABI refuses to load, so the module
is rebuilt whenever the source or the installed Dovecot version changes.
"""

from __future__ import annotations

from importlib import resources
from pathlib import PurePosixPath

NAME = "chatmail_notify"
SOURCE = "chatmail_notify_plugin.c"
# lib<priority>_<name>_plugin.so: Dovecot loads plugins in the order of the number
MODULE = f"lib95_{NAME}_plugin.so"
MODULE_DIR = PurePosixPath("/usr/lib/dovecot/modules")
BUILD_PACKAGES = ("gcc", "libc6-dev", "dovecot-dev")
DOVECOT_INCLUDE = "/usr/include/dovecot"


def source() -> str:
    return resources.files(__package__).joinpath(SOURCE).read_text(encoding="utf-8")


def build_command(source_path: str, module_path: str) -> list[str]:
    """The compiler call that turns the source into a loadable module."""
    return [
        "gcc",
        "-fPIC",
        "-shared",
        "-O2",
        "-Wall",
        "-DHAVE_CONFIG_H",
        "-include",
        f"{DOVECOT_INCLUDE}/config.h",
        f"-I{DOVECOT_INCLUDE}",
        "-o",
        module_path,
        source_path,
    ]
