from __future__ import annotations

import pytest

from cmdeploy.preflight import parse_listeners, parse_os_release, problems

DEBIAN_12 = 'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nID=debian\nVERSION_ID="12"\n'
UBUNTU = 'PRETTY_NAME="Ubuntu 24.04 LTS"\nID=ubuntu\nVERSION_ID="24.04"\n'
SS = """\
LISTEN 0 100 0.0.0.0:25 0.0.0.0:* users:(("master",pid=10,fd=13))
LISTEN 0 511 0.0.0.0:80 0.0.0.0:* users:(("nginx",pid=11,fd=6),("nginx",pid=12,fd=6))
LISTEN 0 128 0.0.0.0:22 0.0.0.0:* users:(("sshd",pid=9,fd=3))
LISTEN 0 4096 [::]:443 [::]:* users:(("apache2",pid=13,fd=4))
LISTEN 0 100 127.0.0.1:10080 0.0.0.0:* users:(("filtermail",pid=14,fd=7))
"""


def test_parse_listeners() -> None:
    assert parse_listeners(SS) == [
        ("0.0.0.0", 25, {"master"}),
        ("0.0.0.0", 80, {"nginx"}),
        ("0.0.0.0", 22, {"sshd"}),
        ("::", 443, {"apache2"}),
        ("127.0.0.1", 10080, {"filtermail"}),
    ]


@pytest.mark.parametrize(
    ("release", "sockets", "expected"),
    [
        (DEBIAN_12, "", []),
        (DEBIAN_12, SS, ["port 443 on relay.example is held by apache2"]),
        (UBUNTU, "", ["relay.example runs Ubuntu 24.04 LTS, but"]),
        # port 53 matters on loopback only: a DNS server on another address is no conflict
        (DEBIAN_12, 'LISTEN 0 1 10.0.0.1:53 0.0.0.0:* users:(("nsd",pid=5,fd=3))', []),
        (
            DEBIAN_12,
            'LISTEN 0 1 127.0.0.1:53 0.0.0.0:* users:(("named",pid=5,fd=3))',
            ["port 53 on relay.example is held by named"],
        ),
    ],
)
def test_problems(release: str, sockets: str, expected: list[str]) -> None:
    found = problems(parse_os_release(release), parse_listeners(sockets), "relay.example")
    assert len(found) == len(expected)
    for paragraph, start in zip(found, expected, strict=True):
        assert paragraph.startswith(start)
        assert "then run `cmdeploy run` again" in paragraph  # says what to do next
