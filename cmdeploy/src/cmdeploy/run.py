"""`cmdeploy run`: deploy the relay onto its host with pyinfra over SSH.

The chatmaild wheel is built here, on the operator's machine, and uploaded; the relay needs
no checkout. pyinfra runs `pyinfra_entry.py` (the deploy of `cmdeploy.deploy`) against
`root@<host>` (or `@local`), with the inputs in the environment. Its output is shown as it
comes and read for the closing summary (`cmdeploy.summary`), which also asks the relay
whether its certificate is still pending and DNS which required records are missing; the
records it checked become what the relay's daily health check expects of DNS
(cmdeploy.health).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from chatmaild.config import Config

from .health import write_dns_expectations
from .layout import Layout
from .preflight import PreflightError, check_target, resolver_lookup
from .remote import RemoteError, read_state
from .summary import Left, Outcome, parse_outcome, summary

DEPLOY = Path(__file__).with_name("pyinfra_entry.py")
CHECKOUT = Path(__file__).resolve().parents[3]
CHATMAILD = CHECKOUT / "chatmaild"
WWW_SOURCE = CHECKOUT / "www" / "src"


class DeployError(Exception):
    """A step of the deploy failed; the message says which and what to do."""


def build_wheels(dest: Path) -> Path:
    """chatmaild and its dependencies as wheels in `dest`: the relay installs them without
    reaching any package index (all are pure Python)."""
    command = [sys.executable, "-m", "pip", "wheel", "--quiet", "-w", str(dest), str(CHATMAILD)]
    # a fixed timestamp makes the same source give the same wheel, so an unchanged relay
    # is not reinstalled and restarted
    env = {**os.environ, "SOURCE_DATE_EPOCH": "315532800"}
    result = subprocess.run(command, capture_output=True, text=True, check=False, env=env)
    if result.returncode != 0 or not list(dest.glob("chatmaild-*.whl")):
        raise DeployError(f"building the chatmaild wheels failed: {result.stderr.strip()[-500:]}")
    return dest


def checkout_version() -> str:
    """The commit deployed, `-dirty` with local changes: written to /etc/chatmail-version."""
    result = subprocess.run(
        ["git", "-C", str(CHECKOUT), "describe", "--always", "--dirty", "--abbrev=12"],
        capture_output=True,
        text=True,
        check=False,
    )
    return result.stdout.strip() if result.returncode == 0 else "unknown"


def build_website(config: Config, dest: Path) -> Path | None:
    """The relay's pages, built here (`www_folder`, doc/config.md): the bundled ones when it is
    empty, the operator's when it names a directory (built first if it holds `src/`),
    none when it names a path that does not exist."""
    from .www import build_site

    if config.www_folder:
        folder = Path(config.www_folder).expanduser()
        if not folder.exists():
            return None
        if not (folder / "src").is_dir():
            return folder
        source = folder / "src"
    else:
        source = WWW_SOURCE
    build_site(config, source, dest)
    return dest


def deploy_passes(website_only: bool = False) -> list[str]:
    """Packages first, in a pass of their own: pyinfra plans each pass from facts read before
    it runs, so users, groups and files the packages create exist when the rest is planned.
    An operator's CMDEPLOY_STAGES is one pass as given."""
    if stages := os.environ.get("CMDEPLOY_STAGES"):
        return [stages]
    if website_only:
        return ["configure"]
    return ["install", "configure,activate"]


def run_pass(argv: list[str], env: dict[str, str], seen: list[str]) -> int:
    """One pyinfra run, its output shown as it comes and kept in `seen` for the summary."""
    with subprocess.Popen(
        argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            seen.append(line)
    return proc.returncode


def what_is_left(config: Config, host: str) -> Left:
    """What the relay still lacks after the deploy, as far as it and DNS tell."""
    import dns.resolver

    from . import dns as relay_dns

    try:
        state = read_state(Layout(config), host)
    except RemoteError:
        return Left(certificate_pending=False, dns_missing=None, not_running=[])
    left = Left(
        certificate_pending=config.tls_mode == "acme" and state.cert_self_issued,
        dns_missing=0,
        not_running=[unit for unit, active in state.active.items() if active != "active"],
    )
    records: list[relay_dns.Record] | None = []  # an IPv4 relay has none
    if not config.is_ipv4:
        facts = relay_dns.facts_from_state(state)
        try:
            result = relay_dns.check_relay(config, facts, dns.resolver.Resolver(), timeout=5)
            left.dns_missing = result.required_problems
            records = result.checked
        except Exception:  # noqa: BLE001 (reported as unchecked; never fails the run)
            left.dns_missing = None
            records = None
    if records is not None:
        # now that the DKIM key and addresses are known: the daily check's DNS expectations
        with contextlib.suppress(RemoteError):
            write_dns_expectations(host, records)
    return left


def pyinfra_command(host: str, dry_run: bool, verbose: bool) -> list[str]:
    pyinfra = str(Path(sys.executable).with_name("pyinfra"))
    argv = [pyinfra, "--yes"]
    if dry_run:
        argv.append("--dry")
    if verbose:
        argv.append("-v")
    if host != "@local":
        argv += ["--ssh-user", "root"]
        # The lab gives its own key and known-hosts file (its hosts get new keys when rebuilt)
        if key := os.environ.get("CMDEPLOY_SSH_KEY"):
            argv += ["--ssh-key", key]
        if known_hosts := os.environ.get("CMDEPLOY_SSH_KNOWN_HOSTS"):
            argv += ["--data", f"ssh_known_hosts_file={known_hosts}"]
    return [*argv, host, str(DEPLOY)]


def run_deploy(
    config: Config,
    ini: Path,
    host: str,
    dry_run: bool = False,
    verbose: bool = False,
    disable_mail: bool = False,
    dns_check: bool = True,
    website_only: bool = False,
) -> int:
    try:
        system = check_target(host, config, resolver_lookup() if dns_check else None)
    except PreflightError as e:
        raise DeployError(str(e)) from None
    with tempfile.TemporaryDirectory() as tmp:
        # prebuilt wheels: where this machine has no package index at hand (the lab's
        # operator namespace)
        prebuilt = os.environ.get("CMDEPLOY_WHEELS")
        wheels = Path(prebuilt) if prebuilt else build_wheels(Path(tmp) / "wheels")
        if not list(wheels.glob("chatmaild-*.whl")):
            raise DeployError(f"CMDEPLOY_WHEELS={wheels} holds no chatmaild wheel")
        website = build_website(config, Path(tmp) / "www")
        env = {
            **os.environ,
            "CHATMAIL_INI": str(ini.resolve()),
            "CHATMAILD_WHEELS": str(wheels),
            "CHATMAIL_WEBSITE": str(website) if website else "",
            "CHATMAIL_VERSION": checkout_version(),
            "CHATMAIL_DISABLE_MAIL": "1" if disable_mail else "",
            "CHATMAIL_WEBSITE_ONLY": "1" if website_only else "",
        }
        print(f"deploying {config.mail_domain} to {host} ({system}) ...", flush=True)
        seen: list[str] = []
        for stages in deploy_passes(website_only):
            argv = pyinfra_command(host, dry_run, verbose)
            returncode = run_pass(argv, {**env, "CMDEPLOY_STAGES": stages}, seen)
            if returncode != 0:
                break
    if returncode != 0:
        raise DeployError(
            f"the deploy to {host} failed (pyinfra exit status {returncode}); the "
            "output above names the failing step. Fix it and run `cmdeploy run` again: "
            "steps that already succeeded are skipped."
        )
    if dry_run:
        print(f"\ndry run: nothing on {host} was changed.")
        return 0
    outcome: Outcome = parse_outcome(seen)
    if website_only:
        print(
            f"\nweb pages of {config.mail_domain}: {'updated' if outcome.changed else 'unchanged'}"
        )
        return 0
    print()
    print(summary(config.mail_domain, outcome, what_is_left(config, host), system))
    return 0
