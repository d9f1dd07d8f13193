from __future__ import annotations

from pathlib import Path

import pytest

from chatmaild.config import (
    OBSOLETE_KEYS,
    Config,
    ConfigError,
    known_keys,
    parse_size,
    read_config,
    render_ini,
    render_reference,
    unknown_keys,
)

SPEC_KEYS_AND_DEFAULTS = {
    # doc/config.md, with values as the typed model holds them
    "max_user_send_per_minute": 60,
    "max_user_send_burst_size": 10,
    "max_mailbox_size": 500 * 2**20,
    "max_message_size": 31457280,
    "delete_mails_after": 20,
    "delete_large_after": 7,
    "delete_inactive_users_after": 90,
    "username_min_length": 9,
    "username_max_length": 9,
    "password_min_length": 9,
    "www_folder": "",
    "filtermail_smtp_port_incoming": 10081,
    "filtermail_http_port_incoming": 10082,
    "filtermail_lmtp_port_transport": 10083,
    "postfix_reinject_port": 10025,
    "postfix_reinject_port_incoming": 10026,
    "disable_ipv6": False,
    "acme_email": "",
    "imap_rawlog": False,
    "imap_compress": False,
    "iroh_relay": "",
    "privacy_postal": "",
    "privacy_mail": "",
    "privacy_pdo": "",
    "privacy_supervisor": "",
    "max_load_1m": 5.0,
    "min_available_memory": 200 * 2**20,
    "min_free_disk_space": 2**30,
    "max_imap_connections": 10000,
    "max_smtp_connections": 1000,
    "tls_external_cert_and_key": "",
    "filtermail_host": "127.0.0.1",
    "postfix_host": "127.0.0.1",
}


def write_ini(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "chatmail.ini"
    path.write_text(body)
    return path


def test_spec_defaults() -> None:
    config = Config.from_params({"mail_domain": "chat.example.org"})
    for key, value in SPEC_KEYS_AND_DEFAULTS.items():
        assert getattr(config, key) == value, key
    assert config.mailboxes_path == Path("/home/vmail/mail/chat.example.org")


def test_every_spec_key_is_known_and_documented() -> None:
    import dataclasses

    assert set(SPEC_KEYS_AND_DEFAULTS) | {"mail_domain", "mailboxes_dir"} <= set(known_keys())
    for f in dataclasses.fields(Config):
        assert f.metadata["doc"].endswith("."), f.name


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("31457280", 31457280),
        ("500M", 500 * 2**20),
        ("500MB", 500 * 2**20),
        ("500m", 500 * 2**20),
        ("2G", 2 * 2**30),
        ("1GB", 2**30),
        (" 64K ", 64 * 1024),
    ],
)
def test_sizes(raw: str, expected: int) -> None:
    assert parse_size(raw) == expected


@pytest.mark.parametrize(
    ("key", "value", "expected_words"),
    [
        ("max_mailbox_size", "500X", "size"),
        ("max_mailbox_size", "-5M", "size"),
        ("delete_mails_after", "twenty", "whole number"),
        ("delete_mails_after", "-1", "whole number"),
        ("max_load_1m", "high", "number"),
        ("filtermail_smtp_port_incoming", "70000", "port"),
        ("disable_ipv6", "maybe", "true or false"),
        ("mail_domain", "not a domain", "domain name"),
        ("mail_domain", "nodots", "domain name"),
        ("mail_domain", "1.2.3", "domain name"),
        ("mail_domain", "-bad.example.org", "domain name"),
        ("username_min_length", "10", "at most username_max_length"),
        ("delete_inactive_users_after", "0", "at least 1 day"),
        ("delete_mails_after", "0", "at least 1 day"),
        ("max_message_size", "0", "at least 1 byte"),
        ("tls_external_cert_and_key", "/only/one.pem", "CERT KEY"),
        ("iroh_relay", "http://iroh.a.org", "https:// URL"),
        ("iroh_relay", "iroh.a.org", "https:// URL"),
        ("iroh_relay", "https://", "https:// URL"),
        ("iroh_relay", "https://iroh.a.org/a b", "https:// URL"),
        ("iroh_relay", "https://[::1", "https:// URL"),
    ],
)
def test_bad_values_name_file_key_value_and_expectation(
    tmp_path: Path, key: str, value: str, expected_words: str
) -> None:
    params = {"mail_domain": "chat.example.org", key: value}
    path = write_ini(tmp_path, "[params]\n" + "".join(f"{k} = {v}\n" for k, v in params.items()))
    with pytest.raises(ConfigError) as excinfo:
        read_config(path)
    e = excinfo.value
    assert e.key == key
    assert e.value == value
    assert expected_words in e.expected
    assert str(path) in str(e) and key in str(e) and value in str(e)


@pytest.mark.parametrize(
    ("body", "key", "words"),
    [
        ("[params]\nmax_user_send_per_minute = 60\n", "mail_domain", "a value for mail_domain"),
        ("[other]\nmail_domain = x.org\n", "params", "[params] section"),
        ("mail_domain = x.org\n", "params", "ini syntax"),
    ],
)
def test_structural_errors(tmp_path: Path, body: str, key: str, words: str) -> None:
    with pytest.raises(ConfigError) as excinfo:
        read_config(write_ini(tmp_path, body))
    assert excinfo.value.key == key
    assert words in str(excinfo.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="readable file"):
        read_config(tmp_path / "absent.ini")


@pytest.mark.parametrize(
    ("domain", "mode", "address_domain"),
    [
        ("chat.example.org", "acme", "chat.example.org"),
        ("_chat.example.org", "self", "_chat.example.org"),
        ("192.0.2.10", "self", "[192.0.2.10]"),
        ("Chat.Example.ORG.", "acme", "chat.example.org"),
    ],
)
def test_derived_tls_mode_and_address_domain(domain: str, mode: str, address_domain: str) -> None:
    config = Config.from_params({"mail_domain": domain})
    assert config.tls_mode == mode
    assert config.address_domain == address_domain


def test_external_cert_wins() -> None:
    config = Config.from_params(
        {"mail_domain": "_x.example.org", "tls_external_cert_and_key": "/c.pem /k.pem"}
    )
    assert config.tls_mode == "external"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (None, ""),  # unset: no iroh relay (none is deployed)
        ("", ""),
        ("https://iroh.a.org", "https://iroh.a.org"),
        (" https://iroh.a.org:8443/ ", "https://iroh.a.org:8443/"),
    ],
)
def test_iroh_relay(raw: str | None, expected: str) -> None:
    params = {"mail_domain": "a.org"} | ({} if raw is None else {"iroh_relay": raw})
    assert Config.from_params(params).iroh_relay == expected


def test_mailboxes_dir_override(tmp_path: Path) -> None:
    config = Config.from_params({"mail_domain": "a.org", "mailboxes_dir": str(tmp_path)})
    assert config.mailboxes_path == tmp_path


def test_unknown_keys_are_listed() -> None:
    params = {"mail_domain": "a.org", "max_mailbox_sise": "1G", "passthrough_senders": "x"}
    assert unknown_keys(params) == ["max_mailbox_sise", "passthrough_senders"]


def test_rendered_ini_reads_back_as_defaults(tmp_path: Path) -> None:
    text = render_ini("chat.example.org")
    config = read_config(write_ini(tmp_path, text))
    assert config == Config.from_params({"mail_domain": "chat.example.org"})
    # every optional key is present, commented out, with its doc line above it
    lines = text.splitlines()
    for key in known_keys():
        if key == "mail_domain":
            assert "mail_domain = chat.example.org" in lines
            continue
        index = next(i for i, line in enumerate(lines) if line.startswith(f"# {key} ="))
        assert lines[index - 1].startswith("# ") and "=" not in lines[index - 1][:30]


def test_rendered_ini_with_overrides(tmp_path: Path) -> None:
    text = render_ini("chat.example.org", {"max_mailbox_size": "1G", "mailboxes_dir": "/srv/m"})
    config = read_config(write_ini(tmp_path, text))
    assert config.max_mailbox_size == 2**30
    assert config.mailboxes_path == Path("/srv/m")


def test_reading_warns_about_unknown_keys(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = write_ini(
        tmp_path, "[params]\nmail_domain = a.org\nmax_mailbox_sise = 1G\npassthrough_senders =\n"
    )
    read_config(path)
    text = caplog.text
    assert "max_mailbox_sise" in text and str(path) in text
    assert "no longer used" in text and "passthrough_senders" in text


@pytest.mark.parametrize("key", ["mtail_address", "turn_socket_path", "passdb_path"])
def test_keys_that_do_nothing_are_obsolete(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, key: str
) -> None:
    """A key with no effect is not documented as a setting: reading it only warns."""
    assert key not in known_keys()
    assert key in OBSOLETE_KEYS
    config = read_config(write_ini(tmp_path, f"[params]\nmail_domain = a.org\n{key} = x\n"))
    assert config == Config.from_params({"mail_domain": "a.org"})
    assert "no longer used" in caplog.text and key in caplog.text
    assert "unknown keys" not in caplog.text
    assert f"`{key}`" in render_reference().rpartition("\n\n")[2]  # below the table


def test_config_reference_is_up_to_date() -> None:
    doc = Path(__file__).parents[2] / "doc" / "config.md"
    regenerate = "venv/bin/python -m chatmaild.config > doc/config.md"
    assert doc.read_text() == render_reference(), f"doc/config.md drifted: run `{regenerate}`"
