"""The pyinfra deploy of a chatmail relay: the order of its components, and its stages.

Each component's steps sit in its own folder beside its templates (`postfix/deploy.py`, ...;
what they share is in `cmdeploy.steps`). `deploy` runs them against the current pyinfra host
in the order of `COMPONENTS`: all installs first, then all configures, then all activates
(`DeployInputs.stages` selects stages; `website_only` uploads the web pages alone). A service
restarts only when one of its files changed, and only after its configuration was validated
(`postconf`, `doveconf -n`, `nginx -t`). Keys and secrets are generated once, on the relay,
and kept.

The host's Debian release (`cmdeploy.release`) is read from its /etc/os-release, a fact
gathered before any operation is planned, and given to every component: Debian 12 and 13
ship different Dovecot versions (packages, configuration files) and run Postfix's master in
different units (doc/debian13.md).

pyinfra executes `pyinfra_entry.py`, which reads the inputs from the environment and calls
`deploy`; a test can call it too, against a host of its own (cmdeploy/tests/test_deploy_plan.py).
"""

from __future__ import annotations

import io
from collections.abc import Callable

from pyinfra import host  # type: ignore[attr-defined]  # set while a deploy runs
from pyinfra.facts.deb import DebPackages
from pyinfra.facts.files import FileContents
from pyinfra.operations import files, server

from chatmaild.config import read_config

from .acme.deploy import Acme, Tls
from .base.deploy import Base, Version
from .chatmaild.deploy import Chatmaild
from .coturn.deploy import Coturn
from .dovecot.deploy import Dovecot
from .journald.deploy import Journald
from .layout import Layout
from .nginx.deploy import Nginx
from .opendkim.deploy import OpenDkim
from .postfix.deploy import Postfix
from .steps import STAGES, Component, DeployInputs, Target, host_release
from .unbound.deploy import Unbound

# While packages install, their services must not start with Debian's default configuration.
POLICY_RC = "/usr/sbin/policy-rc.d"

# The relay, in deploy order: what a later component needs is already in place.
COMPONENTS: list[Callable[[Target], Component]] = [
    Base,
    Journald,
    Unbound,
    Tls,
    Chatmaild,
    OpenDkim,
    Dovecot,
    Postfix,
    Nginx,
    Acme,
    Coturn,
    Version,
]


def deploy(inputs: DeployInputs) -> None:
    """Plan the relay's deploy onto the current pyinfra host."""
    target = Target(Layout(read_config(inputs.ini)), host_release(), inputs)
    if inputs.website_only:
        # nginx serves the pages as they change on disk: no reload needed
        Nginx(target).upload_website()
        return
    components = [make(target) for make in COMPONENTS]
    installed = host.get_fact(DebPackages) or {}
    new_packages = [p for c in components for p in c.packages if p not in installed]
    leftover = host.get_fact(FileContents, path=POLICY_RC) or []
    if "cmdeploy" in "".join(leftover) and not new_packages:
        # an interrupted earlier deploy left its hold in place: lift it
        files.file(name="Let services start again", path=POLICY_RC, present=False)
    for stage in STAGES:
        if stage not in inputs.stages:
            continue
        if stage == "install" and new_packages:
            hold = files.put(
                name="Hold services back while installing",
                src=io.StringIO("#!/bin/sh\n# cmdeploy, while installing packages\nexit 101\n"),
                dest=POLICY_RC,
                mode="755",
            )
        for component in components:
            getattr(component, stage)()
        if stage == "install" and new_packages:
            # decided when it runs: the file did not exist yet when the deploy was planned
            server.shell(
                name="Let services start again",
                commands=[f"rm -f {POLICY_RC}"],
                _if=hold.did_change,
            )
