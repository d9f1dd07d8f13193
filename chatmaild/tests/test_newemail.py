"""Tests for the `/new` CGI program (doc/contract.md §8.2): credentials, dclogin URLs, answers,
CGI I/O."""

from __future__ import annotations

import io
import json
import string
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import parse_qsl, unquote, urlsplit

import pytest

from chatmaild import newemail
from chatmaild.accounts import NameLimits, creation_error
from chatmaild.config import Config

MODES = {
    "acme": {"mail_domain": "chat.example.org"},
    "self-underscore": {"mail_domain": "_chat.example.org"},
    "self-ipv4": {"mail_domain": "192.0.2.10"},
    "external": {
        "mail_domain": "chat.example.org",
        "tls_external_cert_and_key": "/c.pem /k.pem",
    },
}
EXPECTED_TLS_MODE = {
    "acme": "acme",
    "self-underscore": "self",
    "self-ipv4": "self",
    "external": "external",
}
EXPECTED_DOMAIN = {
    "acme": "chat.example.org",
    "self-underscore": "_chat.example.org",
    "self-ipv4": "[192.0.2.10]",
    "external": "chat.example.org",
}
FORBIDDEN_IN_PASSWORD = set("\"'\\%` ")
SPECIAL_PASSWORDS = [
    "a&b+c#d?e=f",
    "&+#?=&+#?=&+",
    "p@ss/w:rd;[x]{y}|~!$()*,.<>^_-",
    "plainpassword",
]


@pytest.fixture(params=list(MODES))
def mode(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture
def config(mode: str) -> Config:
    config = Config.from_params(MODES[mode])
    assert config.tls_mode == EXPECTED_TLS_MODE[mode]
    return config


def make_config(mode: str, **extra: str) -> Config:
    return Config.from_params({**MODES[mode], **extra})


def split_email(email: str) -> tuple[str, str]:
    local, domain = email.split("@")
    return local, domain


def fixed(password: str) -> newemail.Generator:
    """A credential generator with a known result, for checking what `respond` builds."""

    def generate(config: Config) -> tuple[str, str]:
        return f"abcdefghi@{config.address_domain}", password

    return generate


# --- new_credentials -------------------------------------------------------------------------


@pytest.mark.parametrize(("user_len", "pw_min"), [("9", "9"), ("1", "0"), ("20", "30")])
def test_credentials_shape(mode: str, user_len: str, pw_min: str) -> None:
    config = make_config(
        mode, username_min_length="1", username_max_length=user_len, password_min_length=pw_min
    )
    allowed_pw = set(string.ascii_letters + string.digits + string.punctuation)
    for _ in range(50):
        email, password = newemail.new_credentials(config)
        local, domain = split_email(email)
        assert domain == EXPECTED_DOMAIN[mode]
        assert len(local) == int(user_len)
        assert set(local) <= set(string.ascii_lowercase + string.digits)
        assert len(password) == int(pw_min) + 3
        assert set(password) <= allowed_pw
        assert not set(password) & FORBIDDEN_IN_PASSWORD


def test_credentials_pass_creation_rules(config: Config) -> None:
    limits = NameLimits(
        config.username_min_length, config.username_max_length, config.password_min_length
    )
    for _ in range(100):
        email, password = newemail.new_credentials(config)
        assert creation_error(email, password, config.address_domain, limits) is None


def test_default_lengths(config: Config) -> None:
    email, password = newemail.new_credentials(config)
    assert len(split_email(email)[0]) == 9
    assert len(password) == 12


def test_credentials_unique(config: Config) -> None:
    pairs = [newemail.new_credentials(config) for _ in range(1000)]
    assert len({email for email, _ in pairs}) == 1000
    assert len({password for _, password in pairs}) == 1000


def test_passwords_use_the_whole_alphabet() -> None:
    """Over many passwords, every character class shows up (with overwhelming probability)."""
    config = Config.from_params(MODES["acme"])
    seen = set("".join(newemail.new_credentials(config)[1] for _ in range(2000)))
    assert seen & set(string.ascii_lowercase)
    assert seen & set(string.ascii_uppercase)
    assert seen & set(string.digits)
    assert seen & set(string.punctuation)
    assert seen == set(newemail.PASSWORD_ALPHABET)


def test_credentials_use_the_given_choice() -> None:
    config = Config.from_params(MODES["self-ipv4"])

    def first(seq: Sequence[str]) -> str:
        return seq[0]

    assert newemail.new_credentials(config, choice=first) == ("a" * 9 + "@[192.0.2.10]", "a" * 12)


# --- dclogin_url -----------------------------------------------------------------------------


def parse_dclogin(url: str) -> tuple[str, list[tuple[str, str]]]:
    parts = urlsplit(url)
    assert parts.scheme == "dclogin"
    assert not parts.fragment
    query = parse_qsl(parts.query, keep_blank_values=True, strict_parsing=True)
    return unquote(parts.path), query


@pytest.mark.parametrize("password", SPECIAL_PASSWORDS)
def test_dclogin_round_trip(config: Config, password: str) -> None:
    email = f"abcdefghi@{config.address_domain}"
    email_back, query = parse_dclogin(newemail.dclogin_url(email, password, config))
    assert email_back == email
    assert dict(query)["p"] == password
    assert dict(query)["v"] == "1"
    assert dict(query)["ic"] == "3"


def test_dclogin_round_trip_generated(config: Config) -> None:
    for _ in range(200):
        email, password = newemail.new_credentials(config)
        email_back, query = parse_dclogin(newemail.dclogin_url(email, password, config))
        assert (email_back, dict(query)["p"]) == (email, password)


def test_dclogin_exact_domain() -> None:
    config = Config.from_params(MODES["self-underscore"])
    url = newemail.dclogin_url("abcdefghi@_chat.example.org", "a&b+c#d?e=f", config)
    assert url == "dclogin:abcdefghi@_chat.example.org?p=a%26b%2Bc%23d%3Fe%3Df&v=1&ic=3"


def test_dclogin_exact_ipv4() -> None:
    config = Config.from_params(MODES["self-ipv4"])
    url = newemail.dclogin_url("abcdefghi@[192.0.2.10]", "pw/x", config)
    assert url == ("dclogin:abcdefghi@[192.0.2.10]?p=pw%2Fx&v=1&ih=192.0.2.10&sh=192.0.2.10&ic=3")


def test_dclogin_parameter_order(config: Config) -> None:
    _, query = parse_dclogin(newemail.dclogin_url("x@y", "pw", config))
    keys = [key for key, _ in query]
    if config.is_ipv4:
        assert keys == ["p", "v", "ih", "sh", "ic"]
        assert dict(query)["ih"] == dict(query)["sh"] == "192.0.2.10"
    else:
        assert keys == ["p", "v", "ic"]


def test_dclogin_encodes_email() -> None:
    config = Config.from_params(MODES["acme"])
    url = newemail.dclogin_url("a b?c@chat.example.org", "pw", config)
    assert url.startswith("dclogin:a%20b%3Fc@chat.example.org?p=pw&")


# --- respond ---------------------------------------------------------------------------------


def header(response: newemail.Response, name: str) -> str:
    values = [value for key, value in response.headers if key.lower() == name.lower()]
    assert len(values) == 1, f"{name}: {values}"
    return values[0]


def check_credentials_json(
    response: newemail.Response, config: Config, generated: bool = True
) -> dict[str, str]:
    assert response.status == 200
    assert header(response, "Content-Type") == "application/json"
    data: dict[str, str] = json.loads(response.body)
    local, domain = split_email(data["email"])
    assert domain == config.address_domain
    if generated:
        assert len(local) == config.username_max_length
        assert len(data["password"]) == config.password_min_length + 3
    if config.tls_mode == "self":
        assert set(data) == {"email", "password", "dclogin_url"}
        expected = newemail.dclogin_url(data["email"], data["password"], config)
        assert data["dclogin_url"] == expected
    else:
        assert set(data) == {"email", "password"}
    return data


def test_post_gives_credentials(config: Config) -> None:
    check_credentials_json(newemail.respond("POST", config), config)


@pytest.mark.parametrize("password", SPECIAL_PASSWORDS)
def test_post_json_carries_exact_values(config: Config, password: str) -> None:
    response = newemail.respond("POST", config, generate=fixed(password))
    data = check_credentials_json(response, config, generated=False)
    assert data["email"] == f"abcdefghi@{config.address_domain}"
    assert data["password"] == password


def test_post_twice_differs(config: Config) -> None:
    assert newemail.respond("POST", config).body != newemail.respond("POST", config).body


@pytest.mark.parametrize("mode", ["acme", "external"])
def test_get_redirects_to_dcaccount(mode: str) -> None:
    response = newemail.respond("GET", make_config(mode))
    assert response.status == 301
    assert header(response, "Location") == "DCACCOUNT:https://chat.example.org/new"
    assert response.body == b""


@pytest.mark.parametrize("mode", ["self-underscore", "self-ipv4"])
def test_get_in_self_mode_gives_credentials(mode: str) -> None:
    config = make_config(mode)
    response = newemail.respond("GET", config)
    assert not any(key == "Location" for key, _ in response.headers)
    data = check_credentials_json(response, config)
    assert data["dclogin_url"].startswith("dclogin:")


def test_head_is_get_without_body(config: Config) -> None:
    get = newemail.respond("GET", config, generate=fixed("pw"))
    head = newemail.respond("HEAD", config, generate=fixed("pw"))
    assert (head.status, head.headers) == (get.status, get.headers)
    assert head.body == b""


@pytest.mark.parametrize("method", ["PUT", "DELETE", "PATCH", "OPTIONS", "post", ""])
def test_other_methods_not_allowed(config: Config, method: str) -> None:
    response = newemail.respond(method, config)
    assert response.status == 405
    assert header(response, "Allow") == "GET, POST"
    assert b"@" not in response.body


@pytest.mark.parametrize("method", ["GET", "HEAD", "POST", "PUT"])
def test_never_cached(config: Config, method: str) -> None:
    assert header(newemail.respond(method, config), "Cache-Control") == "no-store"


def test_render_cgi() -> None:
    response = newemail.Response(
        301, [("Location", "DCACCOUNT:https://x.org/new"), ("Cache-Control", "no-store")], b""
    )
    assert newemail.render_cgi(response) == (
        b"Status: 301 Moved Permanently\r\n"
        b"Location: DCACCOUNT:https://x.org/new\r\n"
        b"Cache-Control: no-store\r\n\r\n"
    )


# --- CGI I/O ---------------------------------------------------------------------------------


def parse_cgi(output: bytes) -> tuple[int, dict[str, str], bytes]:
    head, sep, body = output.partition(b"\r\n\r\n")
    assert sep, output
    lines = head.decode("ascii").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines)
    assert len(headers) == len(lines), "duplicate header"
    status = int(headers.pop("Status").split()[0])
    return status, headers, body


def write_ini(path: Path, body: str) -> Path:
    path.write_text(f"[params]\n{body}", encoding="utf-8")
    return path


def run_in_process(environ: dict[str, str]) -> tuple[int, dict[str, str], bytes, str]:
    stdout, stderr = io.BytesIO(), io.StringIO()
    newemail.main(environ, stdout, stderr)
    return (*parse_cgi(stdout.getvalue()), stderr.getvalue())


def test_main_in_process(tmp_path: Path) -> None:
    ini = write_ini(tmp_path / "chatmail.ini", "mail_domain = 192.0.2.10\n")
    status, headers, body, err = run_in_process({"REQUEST_METHOD": "GET", "CHATMAIL_INI": str(ini)})
    assert (status, headers["Cache-Control"], err) == (200, "no-store", "")
    assert json.loads(body)["email"].endswith("@[192.0.2.10]")


def test_main_without_method_is_405(tmp_path: Path) -> None:
    ini = write_ini(tmp_path / "chatmail.ini", "mail_domain = chat.example.org\n")
    status, headers, _, _ = run_in_process({"CHATMAIL_INI": str(ini)})
    assert (status, headers["Allow"]) == (405, "GET, POST")


def test_main_unexpected_error_is_500(monkeypatch: pytest.MonkeyPatch) -> None:
    def explode(environ: object, stderr: object) -> newemail.Response:
        raise RuntimeError("secret detail")

    monkeypatch.setattr(newemail, "handle", explode)
    status, _, body, err = run_in_process({"REQUEST_METHOD": "POST"})
    assert status == 500
    assert err == "newemail: error: unexpected RuntimeError\n"
    assert b"secret" not in body


SCRIPT = Path(sys.executable).parent / "chatmail-newemail"


def run_cgi(method: str, ini: Path) -> tuple[int, dict[str, str], bytes, str]:
    assert SCRIPT.exists(), f"{SCRIPT} missing: pip install -e chatmaild"
    env = {"REQUEST_METHOD": method, "CHATMAIL_INI": str(ini), "GATEWAY_INTERFACE": "CGI/1.1"}
    proc = subprocess.run([str(SCRIPT)], env=env, capture_output=True, timeout=60, check=True)
    return (*parse_cgi(proc.stdout), proc.stderr.decode())


def test_cgi_post(tmp_path: Path) -> None:
    ini = write_ini(tmp_path / "chatmail.ini", "mail_domain = chat.example.org\n")
    status, headers, body, err = run_cgi("POST", ini)
    assert status == 200
    assert headers == {"Content-Type": "application/json", "Cache-Control": "no-store"}
    data = json.loads(body)
    assert set(data) == {"email", "password"}
    assert data["email"].endswith("@chat.example.org")
    assert len(data["password"]) == 12
    assert err == ""


def test_cgi_get_redirect(tmp_path: Path) -> None:
    ini = write_ini(tmp_path / "chatmail.ini", "mail_domain = chat.example.org\n")
    status, headers, body, _ = run_cgi("GET", ini)
    assert (status, headers["Location"], body) == (
        301,
        "DCACCOUNT:https://chat.example.org/new",
        b"",
    )


@pytest.mark.parametrize(
    ("ini_body", "key"),
    [
        ("mail_domain = chat.example.org\nmax_message_size = lots\n", "max_message_size"),
        ("max_message_size = 1000\n", "mail_domain"),
        ("mail_domain = not a domain\n", "mail_domain"),
    ],
)
def test_cgi_broken_ini(tmp_path: Path, ini_body: str, key: str) -> None:
    ini = write_ini(tmp_path / "chatmail.ini", ini_body)
    status, headers, body, err = run_cgi("POST", ini)
    assert status == 500
    assert headers["Content-Type"].startswith("text/plain")
    assert b"misconfigured" in body
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1
    assert key in err
    assert str(ini) in err


def test_cgi_missing_ini(tmp_path: Path) -> None:
    ini = tmp_path / "absent.ini"
    status, _, body, err = run_cgi("POST", ini)
    assert status == 500
    assert b"misconfigured" in body
    assert "Traceback" not in err
    assert str(ini) in err
