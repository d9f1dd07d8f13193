"""The whole deploy planned by pyinfra against a fake relay (fake_relay.py): which operations
and restarts a relay's state and a change of configuration cause, without a host.

A relay "as deployed" is the fake after the passes of `cmdeploy run` (packages, then the rest:
cmdeploy.run.deploy_passes) with what the deploy's shell steps make (key, certificate,
venv, Dovecot plugin, nginx.conf's edited line) put in place by hand.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
from fake_relay import FakeRelay, Run, apply, plan

from chatmaild.config import read_config, render_ini
from cmdeploy import acme
from cmdeploy.chatmaild.deploy import venv_matches
from cmdeploy.dovecot import plugin
from cmdeploy.layout import Layout
from cmdeploy.postfix import MASTER_PID_FILE as POSTFIX_MASTER_PID_FILE
from cmdeploy.run import deploy_passes
from cmdeploy.steps import (
    PENDING_RESTARTS,
    DeployInputs,
    own_socket_check,
    stale_log_socket,
)

DOMAIN = "chat.example.org"
CHATMAILD_SERVICES = {
    "doveauth.service",
    "chatmail-lastlogin.service",
    "chatmail-metadata.service",
    "filtermail.service",
    "filtermail-incoming.service",
    "filtermail-transport.service",
    "chatmail-metrics.service",
    "chatmail-postlog.service",
}
DAEMONS = {"postfix", "dovecot", "nginx", "opendkim", "unbound", "coturn", "systemd-journald"}


@pytest.fixture
def inputs(tmp_path: Path) -> DeployInputs:
    ini = tmp_path / "chatmail.ini"
    ini.write_text(render_ini(DOMAIN))
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / "chatmaild-0.1-py3-none-any.whl").write_bytes(b"a wheel built here")
    return DeployInputs(ini=ini, wheels=wheels, version="0123456789ab")


def with_setting(inputs: DeployInputs, key: str, value: str) -> DeployInputs:
    """The same inputs with one ini setting changed (a new ini beside the old)."""
    ini = inputs.ini.with_name(f"chatmail-{key}.ini")
    ini.write_text(render_ini(DOMAIN, {key: value}))
    return dataclasses.replace(inputs, ini=ini)


def run_deploy(relay: FakeRelay, inputs: DeployInputs) -> Run:
    """`cmdeploy run`: packages in a pass of their own, then the rest, each planned from the
    facts the pass before left, and applied to the relay."""
    steps = []
    for stages in deploy_passes():
        run = plan(relay, dataclasses.replace(inputs, stages=tuple(stages.split(","))))
        apply(relay, run)
        steps += run.planned
    return Run(steps)


def deployed(inputs: DeployInputs, debian: str = "12") -> FakeRelay:
    relay = FakeRelay(debian)
    run_deploy(relay, inputs)
    # what the deploy's shell steps made, which the fake does not model
    layout = Layout(read_config(inputs.ini))
    relay.write(str(layout.dkim_key), "a key\n", user="opendkim", group="opendkim", mode=600)
    relay.write(str(layout.tls.cert), "a certificate\n")
    relay.write(str(acme.issued_cert(layout)), "an issued certificate\n")
    relay.write(str(plugin.MODULE_DIR / plugin.MODULE), b"\x7fELF")
    relay.write("/etc/nginx/nginx.conf", "events {\n\tworker_connections 2048;\n}\n")
    relay.outputs[venv_matches(str(layout.venv))] = "ok\n"
    return relay


def test_a_fresh_host_gets_its_packages_under_a_hold_and_starts_every_service(
    inputs: DeployInputs,
) -> None:
    run = plan(FakeRelay(), inputs)
    changes = run.changes
    assert changes[0] == "Hold services back while installing"
    installs = [s.name for s in run.planned if any("apt-get" in c for c in s.lines())]
    assert "Install postfix" in installs and "Install coturn" in installs
    # the hold is lifted once every package is in, before any configuration
    lifted = changes.index("Let services start again")
    assert lifted > max(changes.index(n) for n in installs)
    assert lifted < changes.index("Install /etc/postfix/main.cf")
    assert {"DKIM key (once)", "Placeholder certificate (once)"} <= set(changes)
    sockets = {"chatmail-postlog.socket", "filtermail.socket"}
    assert run.restarts == DAEMONS | CHATMAILD_SERVICES | sockets
    assert changes.index("Validate the postfix configuration") < changes.index("Restart postfix")
    assert run.changed("Request the certificate (ACME)")


def test_a_relay_deployed_before_plans_no_change(inputs: DeployInputs) -> None:
    relay = deployed(inputs)
    assert run_deploy(relay, inputs).changes == []
    # nor with every stage in one pass
    assert plan(relay, inputs).changes == []


def test_a_postfix_setting_restarts_postfix_and_not_dovecot(inputs: DeployInputs) -> None:
    relay = deployed(inputs)
    run = plan(relay, with_setting(inputs, "filtermail_lmtp_port_transport", "10090"))
    assert {n for n in run.changes if n.startswith("Install ")} == {
        "Install /etc/postfix/main.cf",
        "Install chatmail.ini",
        # read by the daily health check alone: no service restarts for it
        "Install /etc/chatmail/health.json",
    }
    assert run.changed("Validate the postfix configuration")
    # chatmaild's services read the ini themselves
    assert run.restarts == {"postfix"} | CHATMAILD_SERVICES


GATE_SOCKET_RESTART = (
    "systemctl stop filtermail.service && systemctl restart filtermail.socket"
    " && systemctl start filtermail.service"
)


def gate_socket_restarted(run: Run) -> bool:
    """Whether the plan restarts the gate's socket unit, its service stopped around it."""
    steps = [s for s in run.planned if s.name == "Restart filtermail.socket" and s.commands]
    return any(GATE_SOCKET_RESTART in line for step in steps for line in step.lines())


def test_a_gate_that_made_its_own_socket_is_stopped_before_its_socket_unit_starts(
    inputs: DeployInputs,
) -> None:
    """A relay of the release before: filtermail bound the gate's socket itself. systemd does
    not start a socket unit whose service runs, so the deploy stops filtermail, restarts the
    socket unit and starts filtermail again on its socket."""
    relay = deployed(inputs)
    del relay.nodes["/etc/systemd/system/filtermail.socket"]
    assert gate_socket_restarted(plan(relay, inputs))
    # a relay deployed with the socket unit restarts nothing
    assert not gate_socket_restarted(plan(deployed(inputs), inputs))


def test_a_deploy_that_failed_before_the_gates_socket_started_is_mended(
    inputs: DeployInputs,
) -> None:
    """The unit file was installed, then the deploy failed before the socket's restart left
    its marker: no file changes now, but filtermail still runs on its own socket, and only
    the same stop, restart and start lets the socket unit take over."""
    relay = deployed(inputs)
    relay.outputs[own_socket_check("filtermail.service", "filtermail.socket")] = "own socket\n"
    run = plan(relay, inputs)
    assert gate_socket_restarted(run)
    assert run.restarts == {"filtermail.socket"}


def test_a_restart_that_failed_last_time_is_done_now(inputs: DeployInputs) -> None:
    relay = deployed(inputs)
    relay.write(f"{PENDING_RESTARTS}/dovecot", "")
    run = plan(relay, inputs)
    assert run.restarts == {"dovecot"}
    assert run.changed("Validate the dovecot configuration")
    assert run.changed("Restarted dovecot")


def test_postfix_logging_into_a_stale_socket_is_restarted(inputs: DeployInputs) -> None:
    relay = deployed(inputs)
    relay.outputs[stale_log_socket(POSTFIX_MASTER_PID_FILE)] = "stale\n"
    assert plan(relay, inputs).restarts == {"postfix"}


def test_debian_13_gets_dovecot_24_and_postfix_service_drop_ins(inputs: DeployInputs) -> None:
    relay = deployed(inputs, debian="12")
    # upgraded in place: Debian 13's os-release, the 2.3 files still there
    relay.write("/etc/os-release", FakeRelay("13").text("/etc/os-release") or "")
    run = run_deploy(relay, inputs)
    names = set(run.changes)
    assert "Install dovecot-imapd, dovecot-lmtpd, dovecot-auth-lua, lua-socket, gcc, libc6-dev, " \
        "dovecot-dev" in names  # fmt: skip
    assert "Install /etc/dovecot/auth.lua" in names
    assert "Remove /etc/dovecot/auth-dict.conf.ext (left for the other Debian release)" in names
    assert "Install /etc/systemd/system/postfix.service.d/chatmail-postlog.conf" in names
    stale = "/etc/systemd/system/postfix@.service.d/chatmail-postlog.conf"
    assert f"Remove {stale} (left for the other Debian release)" in names
    assert {"dovecot", "postfix"} <= run.restarts
    assert "/etc/dovecot/auth-dict.conf.ext" not in relay.nodes


def test_a_fresh_debian_13_host_gets_no_file_of_debian_12(inputs: DeployInputs) -> None:
    run = plan(FakeRelay("13"), inputs)
    assert "Install /etc/dovecot/auth.lua" in run.names
    assert not any("auth-dict" in n or "postfix@.service.d" in n for n in run.names)
    assert not any(n.startswith("Remove ") for n in run.names)


def test_disable_mail_keeps_postfix_and_dovecot_stopped(inputs: DeployInputs) -> None:
    relay = deployed(inputs)
    relay.running |= {"postfix.service", "dovecot.service"}
    run = plan(relay, dataclasses.replace(inputs, disable_mail=True))
    assert run.changes == ["Stop dovecot", "Stop postfix"]
    for unit in ("postfix", "dovecot"):
        assert f"Restart {unit}" not in run.names and f"Run {unit}" not in run.names


def test_an_interrupted_install_leaves_its_hold_to_the_next_run(inputs: DeployInputs) -> None:
    relay = deployed(inputs)
    relay.write("/usr/sbin/policy-rc.d", "#!/bin/sh\n# cmdeploy, while installing packages\n")
    assert plan(relay, inputs).changes == ["Let services start again"]


def test_the_website_alone_touches_nothing_else(inputs: DeployInputs, tmp_path: Path) -> None:
    site = tmp_path / "www"
    site.mkdir()
    (site / "index.html").write_text("<p>hello</p>\n")
    only = dataclasses.replace(inputs, website=site, website_only=True, stages=("configure",))
    run = plan(deployed(inputs), only)
    assert run.names == ["Upload the web pages"]
    assert run.changes == ["Upload the web pages"]


def test_the_deploy_path_imports_neither_the_lab_nor_the_bench() -> None:
    modules = ["cmdeploy.deploy", "cmdeploy.steps", "cmdeploy.run"]
    check = (
        f"import sys; import {', '.join(modules)}; "
        "print(sorted(m for m in sys.modules if m.startswith(('cmdeploy.lab', 'cmdeploy.bench'))))"
    )
    result = subprocess.run(
        [sys.executable, "-c", check], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"
