"""OpenDKIM, unbound and journald configuration, checked by the daemons' own tools."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

import pytest

from chatmaild.config import Config
from cmdeploy.journald import journald_files
from cmdeploy.layout import Layout
from cmdeploy.opendkim import genkey_command, opendkim_files
from cmdeploy.unbound import unbound_files


def layout(**params: str) -> Layout:
    return Layout(Config.from_params({"mail_domain": "chat.example.org", **params}))


@pytest.fixture
def private_dir() -> Iterator[Path]:
    """A directory no other user can write to, nor its parents: OpenDKIM insists on that."""
    path = Path(tempfile.mkdtemp(prefix="chatmail-test-", dir="/run"))
    try:
        yield path
    finally:
        shutil.rmtree(path)


@pytest.mark.skipif(shutil.which("opendkim") is None, reason="needs opendkim")
def test_opendkim_accepts_its_config_with_a_generated_key(private_dir: Path) -> None:
    tmp_path = private_dir
    base = Layout(
        Config.from_params({"mail_domain": "chat.example.org"}),
        dkim_key=PurePosixPath(tmp_path / "keys" / "opendkim.private"),
        opendkim_socket=PurePosixPath(tmp_path / "opendkim.sock"),
    )
    (tmp_path / "keys").mkdir()
    subprocess.run(genkey_command(base), check=True, capture_output=True)
    assert (tmp_path / "keys" / "opendkim.private").read_text().startswith("-----BEGIN")
    record = (tmp_path / "keys" / "opendkim.txt").read_text()
    assert "opendkim._domainkey" in record and "p=" in record
    conf = tmp_path / "opendkim.conf"
    conf.write_text(next(iter(opendkim_files(base).values())))
    result = subprocess.run(
        ["opendkim", "-n", "-x", str(conf)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr


def test_opendkim_signs_only_originating_mail() -> None:
    conf = next(iter(opendkim_files(layout()).values()))
    lines = set(conf.splitlines())
    assert {"Mode s", "MTA ORIGINATING", "InternalHosts -", "Selector opendkim"} <= lines
    assert "Canonicalization relaxed/simple" in lines
    assert "Domain chat.example.org" in lines


@pytest.mark.skipif(shutil.which("unbound-checkconf") is None, reason="needs unbound")
@pytest.mark.parametrize(
    ("params", "expected", "absent"),
    [
        ({}, ["interface: ::1", "cache-max-negative-ttl: 0"], ["forward-zone"]),
        ({"disable_ipv6": "true"}, ["do-ip6: no"], ["interface: ::1"]),
        (
            {"dns_forwarders": "192.0.2.53 2001:db8::53"},
            [
                "forward-addr: 192.0.2.53",
                "forward-addr: 2001:db8::53",
                'module-config: "iterator"',
                'local-zone: "test." nodefault',
            ],
            [],
        ),
    ],
)
def test_unbound_config(
    tmp_path: Path, params: dict[str, str], expected: list[str], absent: list[str]
) -> None:
    ours = tmp_path / "chatmail.conf"
    ours.write_text(next(iter(unbound_files(layout(**params)).values())))
    # as Debian's unbound.conf.d does: the root trust anchor, then our file
    anchor = tmp_path / "root.key"
    shutil.copy("/usr/share/dns/root.key", anchor)
    main = tmp_path / "unbound.conf"
    main.write_text(
        f'server:\n    chroot: ""\n    directory: "{tmp_path}"\n'
        f'    auto-trust-anchor-file: "{anchor}"\ninclude: "{ours}"\n'
    )
    result = subprocess.run(
        ["unbound-checkconf", str(main)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    text = ours.read_text()
    for line in expected:
        assert line in text
    for line in absent:
        assert line not in text


def test_journald_keeps_logs_in_memory_for_days_only() -> None:
    conf = next(iter(journald_files(layout()).values()))
    assert "Storage=volatile" in conf and "MaxRetentionSec=3d" in conf
