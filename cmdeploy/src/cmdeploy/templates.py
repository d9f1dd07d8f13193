"""Renders the config files that cmdeploy installs on a relay.

Each deployed component has a folder in this package holding its templates beside its deploy
code. Templates are Jinja2 with StrictUndefined (a missing variable is an error, never an
empty string) and get a `managed_by` line to put in their header comment.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

import jinja2

MANAGED_BY = "managed by cmdeploy: changes here are overwritten on the next deploy"


def render(component: str, name: str, **variables: Any) -> str:
    text = resources.files(__package__).joinpath(component, name).read_text(encoding="utf-8")
    env = jinja2.Environment(
        # config files, not HTML: escaping would corrupt them
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,  # {% ... %} lines leave no blank line behind
        lstrip_blocks=True,
        autoescape=False,  # noqa: S701
    )
    return env.from_string(text).render(managed_by=MANAGED_BY, **variables)
