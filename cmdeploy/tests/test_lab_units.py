"""The lab's bookkeeping, without bringing a lab up (that is `cmdeploy lab up`'s own test)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from unittest import mock

import pytest

from cmdeploy import lab
from cmdeploy.lab import net, services


@pytest.fixture
def lab_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(lab, "LAB", tmp_path)
    return tmp_path


@pytest.mark.parametrize(
    ("netns", "link"),
    [
        ("cmlab-client", "cm-client-h"),
        ("cmlab-relay1", "cm-relay1-h"),
        ("cmlab-relay12", "cm-relay12-h"),
    ],
)
def test_host_link_names_are_unique_and_short(netns: str, link: str) -> None:
    assert net.Namespace(netns, "10.231.0.5").host_link == link
    assert len(link) <= 15  # the kernel's limit for interface names


def test_state_round_trip_and_status_shape(lab_dir: Path) -> None:
    state = lab.State()
    state.relays.append(
        lab.Relay("relay1", "_relay1.test", "10.231.0.11", "cmlab-relay1", "/x/relay1.ini", 42)
    )
    state.pids["dns"] = 7
    state.save()
    loaded = lab.State.load()
    assert loaded == state
    info = lab.status(loaded)
    assert info["relays"] == [
        {
            "domain": "_relay1.test",
            "ip": "10.231.0.11",
            "ssh": "root@10.231.0.11",
            "config": "/x/relay1.ini",
            "debian": "12",
        }
    ]
    assert {"dns", "client_netns", "ca_cert", "push_fake"} <= set(info)
    assert info["push_fake"] == services.push_url()


def test_zones_before_and_after_deploy(lab_dir: Path) -> None:
    state = lab.State(relays=[lab.Relay("relay1", "_relay1.test", "10.231.0.11", "n", "c")])
    before = lab.relay_zones(state)["_relay1.test"]
    assert "_relay1.test. IN A 10.231.0.11" in before and "IN SOA" in before
    (lab_dir / "relay1.zone").write_text("_relay1.test. 3600 IN MX 10 _relay1.test.\n")
    after = lab.relay_zones(state)["_relay1.test"]
    assert "IN MX 10 _relay1.test." in after and "IN NS ns._relay1.test." in after


@pytest.mark.parametrize(
    ("spare_pid", "spare_alive", "flushed_spare"),
    [(0, False, False), (4242, True, True), (4242, False, False)],
)
def test_dns_failures_are_forgotten_on_every_relay_and_on_the_spare_while_it_runs(
    spare_pid: int, spare_alive: bool, flushed_spare: bool
) -> None:
    state = lab.State(
        relays=[
            lab.Relay("relay1", "_relay1.test", "10.231.0.11", "n1", "c1"),
            lab.Relay("relay2", "_relay2.test", "10.231.0.12", "n2", "c2"),
        ]
    )
    if spare_pid:
        state.pids[lab.SPARE] = spare_pid
    with (
        mock.patch.object(lab.hosts, "ssh") as ssh,
        mock.patch.object(lab.hosts, "alive", side_effect=lambda pid: spare_alive and pid > 0),
    ):
        lab.forget_dns_failures(state, Path("/k"))
    flushed = [c.args[1] for c in ssh.call_args_list]
    expected = ["10.231.0.11", "10.231.0.12"] + ([lab.SPARE_IP] if flushed_spare else [])
    assert flushed == expected
    for c in ssh.call_args_list:
        assert "flush_infra all" in c.args[2] and "flush_zone test" in c.args[2]


def test_lab_addresses_stay_in_the_lab_subnet() -> None:
    assert net.GATEWAY in {str(a) for a in net.SUBNET}
    assert net.CLIENT_IP in {str(a) for a in net.SUBNET}
    assert net.SUBNET.is_private


def test_the_proxy_lets_lab_hosts_reach_debian_mirrors_only(lab_dir: Path) -> None:
    conf = services.TINYPROXY_CONF.format(filter=lab_dir / "tinyproxy.allow")
    assert "FilterDefaultDeny Yes" in conf  # a whitelist: everything else is refused
    assert f"Listen {net.GATEWAY}" in conf and f"Allow {net.SUBNET}" in conf
    assert services.ALLOWED_HOSTS == ("deb.debian.org", "security.debian.org")


def test_a_tree_booted_again_keeps_the_resolver_its_deploy_set(tmp_path: Path) -> None:
    from cmdeploy.lab import hosts as lab_hosts
    from cmdeploy.lab.net import GATEWAY

    base = tmp_path / "base"
    for sub in ("etc/apt/apt.conf.d", "root"):
        (base / sub).mkdir(parents=True)
    key = tmp_path / "id_ed25519"
    key.with_suffix(".pub").write_text("ssh-ed25519 AAAA lab\n")
    tree = tmp_path / "relay1"
    lab_hosts.prepare_tree(base, tree, "relay1", key)
    resolv = tree / "etc" / "resolv.conf"
    assert resolv.read_text() == f"nameserver {GATEWAY}\n"  # fresh: the lab's DNS
    resolv.write_text("nameserver 127.0.0.1\n")  # what the deploy writes
    lab_hosts.prepare_tree(base, tree, "relay1", key)  # a reboot
    assert resolv.read_text() == "nameserver 127.0.0.1\n"


def test_each_relay_gets_its_debian_release_the_last_one_standing_for_the_rest() -> None:
    assert lab.releases_of("13", 3) == ["13", "13", "13"]
    assert lab.releases_of("12,13", 3) == ["12", "13", "13"]
    assert lab.releases_of("13, 12", 2) == ["13", "12"]
    with pytest.raises(lab.LabError, match="the lab has Debian 12 or 13, not '11'"):
        lab.releases_of("12,11", 2)
    with pytest.raises(lab.LabError, match="needs a release"):
        lab.releases_of(",", 2)


def test_a_relay_of_an_older_lab_state_runs_debian_12(tmp_path: Path) -> None:
    relay = {"name": "relay1", "domain": "relay1.test", "ip": "10.231.0.11"}
    state = {"relays": [{**relay, "netns": "cmlab-relay1", "config": "x.ini", "pid": 0}]}
    (tmp_path / "state.json").write_text(json.dumps(state))
    with mock.patch.object(lab, "LAB", tmp_path):
        assert lab.State.load().relays[0].debian == "12"


def test_a_reboot_that_hangs_ends_with_the_power_cut() -> None:
    from cmdeploy.lab import hosts

    # a host whose shutdown hangs: its process does not end by itself
    stuck = subprocess.Popen(["sleep", "100"])
    try:
        assert hosts.finish_reboot(stuck.pid, grace=0.5) is True
        assert stuck.wait(timeout=40) != 0  # ended by a signal
    finally:
        stuck.kill()
    # a host that goes down by itself is left alone
    quick = subprocess.Popen(["sleep", "0.2"])
    assert hosts.finish_reboot(quick.pid, grace=30) is False
    quick.wait()
