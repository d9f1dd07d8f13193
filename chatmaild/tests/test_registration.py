"""Registration modes, the autorelay switch and invites (doc/accounts.md): the state, /new,
doveauth's refusals and chatmail-accounts' registration and invite actions."""

from __future__ import annotations

import asyncio
import io
import json
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from chatmaild_testing import make_config

from chatmaild import accountscmd, metrics, newemail, registration
from chatmaild.config import Config, ConfigError
from chatmaild.doveauth import AuthDict
from chatmaild.registration import (
    EXPIRED,
    INVALID,
    MISSING,
    USED_UP,
    InviteStore,
    SettingsReader,
    effective,
    parse_duration,
    parse_state,
)
from chatmaild.resources import Readings

NOW = 1_800_000_000.0
DAY = 86400


@pytest.fixture
def config(tmp_path: Path) -> Config:
    (tmp_path / "mailboxes").mkdir()
    InviteStore(tmp_path / "reg").make_dirs()
    return make_config(tmp_path / "mailboxes", registration_dir=str(tmp_path / "reg"))


@pytest.fixture
def store(config: Config) -> InviteStore:
    return InviteStore(config.registration_path)


def counter() -> Callable[[], tuple[str, str]]:
    n = iter(range(10**6))
    return lambda: (f"user{next(n):05d}@example.org", "pass-word-12")


# --- the autorelay mark and the settings --------------------------------------------------------


@pytest.mark.parametrize(("length", "marked"), [(22, False), (23, True), (24, False)])
def test_the_autorelay_mark_is_exactly_23_characters(length: int, marked: bool) -> None:
    assert registration.is_autorelay("x" * length) is marked
    # characters, not bytes: a multi-byte password of 23 characters is marked too
    assert registration.is_autorelay("ä" * length) is marked


def test_new_never_hands_out_an_autorelay_password() -> None:
    config = make_config(Path("/nonexistent"), password_min_length="20")  # 20 + 3 = 23
    _, password = newemail.new_credentials(config)
    assert len(password) == 24


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("30m", 1800), ("12h", 43200), ("7d", 7 * DAY), ("2w", 14 * DAY), (" 1d ", DAY)],
)
def test_durations(raw: str, expected: int) -> None:
    assert parse_duration(raw) == expected


@pytest.mark.parametrize("raw", ["", "7", "0d", "-1d", "7y", "1.5d", "d", "9999999d", "7 d"])
def test_bad_durations(raw: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(raw)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"[]",
        b'{"mode": "invite", "extra": 1}',
        b'{"mode": "Invite"}',
        b'{"mode": "../open"}',
        b'{"refuse_autorelay": "yes"}',
        b"\xff",
    ],
)
def test_hostile_state_files_are_refused(data: bytes) -> None:
    with pytest.raises(ValueError):
        parse_state(data)


def test_the_run_time_state_wins_key_by_key(config: Config) -> None:
    assert effective(config, None) == registration.Settings("open", False, "chatmail.ini")
    assert effective(config, {"refuse_autorelay": True}) == registration.Settings(
        "open", True, "cmdeploy registration"
    )
    closed_ini = make_config(Path("/x"), registration="closed", refuse_autorelay="true")
    assert effective(closed_ini, {"mode": "invite"}).mode == "invite"
    assert effective(closed_ini, {"mode": "invite"}).refuse_autorelay is True


def test_a_bad_registration_key_is_one_config_error() -> None:
    with pytest.raises(ConfigError, match="expected open, invite or closed"):
        make_config(Path("/x"), registration="invites")


def test_the_reader_follows_the_file_and_fails_closed(config: Config) -> None:
    reader = SettingsReader(config)
    assert reader.current().mode == "open"
    registration.write_state(config.registration_path, "invite", None)
    assert reader.current().mode == "invite"
    registration.write_state(config.registration_path, None, True)
    assert reader.current() == registration.Settings("invite", True, "cmdeploy registration")
    (config.registration_path / "state.json").write_text("{not json")
    assert reader.current().mode == "closed"
    assert registration.clear_state(config.registration_path)
    assert reader.current().mode == "open"
    assert not registration.clear_state(config.registration_path)


# --- invites ------------------------------------------------------------------------


def test_an_invite_hands_out_its_uses_then_is_used_up(store: InviteStore) -> None:
    token, invite = store.create(2, 7 * DAY, NOW)
    assert store.check(token, NOW) is None
    first = store.redeem(token, NOW, counter())
    assert first == ("user00000@example.org", "pass-word-12")
    assert store.handed_out("user00000@example.org")
    assert store.redeem(token, NOW, counter()) == ("user00001@example.org", "pass-word-12")
    assert store.redeem(token, NOW, counter()) == USED_UP
    assert store.check(token, NOW) == USED_UP
    assert store.used(invite.id) == 2
    assert not store.handed_out("user00002@example.org")


def test_the_token_is_stored_nowhere(store: InviteStore) -> None:
    token, invite = store.create(1, None, NOW)
    files = [p for p in store.dir.rglob("*") if p.is_file()]
    assert all(token.encode() not in p.read_bytes() for p in files)
    assert token not in "".join(str(p) for p in store.dir.rglob("*"))
    assert invite.hash == registration.token_hash(token)


def test_an_expired_invite_hands_out_nothing(store: InviteStore) -> None:
    token, _ = store.create(5, DAY, NOW)
    assert store.redeem(token, NOW + DAY - 1, counter()) != EXPIRED
    assert store.redeem(token, NOW + DAY, counter()) == EXPIRED
    assert store.check(token, NOW + DAY) == EXPIRED


@pytest.mark.parametrize("content", [b"", b"{}", b'{"hash": 1}', b"\xff", b"[1]"])
def test_a_damaged_invite_file_hands_out_nothing(store: InviteStore, content: bytes) -> None:
    token, invite = store.create(5, None, NOW)
    (store.invites / f"{invite.id}.json").write_bytes(content)
    assert store.redeem(token, NOW, counter()) == INVALID
    assert store.check(token, NOW) == INVALID
    assert list(store.handed.iterdir()) == []


def test_a_revoked_invite_hands_out_nothing(store: InviteStore, tmp_path: Path) -> None:
    token, invite = store.create(5, None, NOW)
    email, _ = store.redeem(token, NOW, counter())
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").touch()
    (store.uses / invite.id / "link").symlink_to(outside)  # /new's user could plant one
    assert store.revoke(invite.id)
    assert store.redeem(token, NOW, counter()) == INVALID
    assert not store.revoke(invite.id)
    # its uses go with it; the address handed out stays creatable, the symlink's target stays
    assert not (store.uses / invite.id).exists()
    assert store.handed_out(email)
    assert (outside / "keep").exists()


@pytest.mark.parametrize(
    "token",
    [
        None,
        "",
        "../../etc/passwd",
        "../invites/x",
        "a" * 15,
        "a" * 65,
        "token with spaces and more",
        "AAAAAAAAAAAAAAAAAAAAAA",  # well-formed, but no invite
    ],
)
def test_hostile_tokens_hand_out_nothing(store: InviteStore, token: str | None) -> None:
    store.create(5, None, NOW)
    expected = MISSING if not token else INVALID
    assert store.redeem(token, NOW, counter()) == expected
    assert store.check(token, NOW) == expected
    assert list(store.handed.iterdir()) == []


@pytest.mark.parametrize("invite_id", ["../state", "..", "x" * 12, "ABCDEF012345", ""])
def test_revoke_takes_only_an_id(store: InviteStore, invite_id: str) -> None:
    (store.dir / "state.json").write_text("{}")
    assert not store.revoke(invite_id)
    assert (store.dir / "state.json").exists()


def test_the_last_use_is_spent_once_under_concurrency(store: InviteStore) -> None:
    token, _ = store.create(3, None, NOW)
    generate = counter()
    with ThreadPoolExecutor(20) as pool:
        results = list(pool.map(lambda _: store.redeem(token, NOW, generate), range(20)))
    assert sum(isinstance(r, tuple) for r in results) == 3
    assert results.count(USED_UP) == 17


def test_a_collision_draws_another_address(store: InviteStore) -> None:
    token, _ = store.create(2, None, NOW)
    (store.handed / "same00000@example.org").touch()
    draws = iter(["same00000@example.org", "other0000@example.org"])
    assert store.redeem(token, NOW, lambda: (next(draws), "pw-pw-pw-pw")) == (
        "other0000@example.org",
        "pw-pw-pw-pw",
    )


# --- /new ------------------------------------------------------------------------


def new(config: Config, method: str, token: str | None, store: InviteStore) -> newemail.Response:
    reg = newemail.Registration(SettingsReader(config).current(), store, NOW)
    return newemail.respond(method, config, token=token, reg=reg)


def test_new_in_invite_mode(config: Config, store: InviteStore) -> None:
    registration.write_state(config.registration_path, "invite", None)
    token, invite = store.create(1, DAY, NOW)
    # a GET (acme mode) checks and redirects with the token, spending nothing
    got = new(config, "GET", token, store)
    assert got.status == 301
    assert dict(got.headers)["Location"] == f"DCACCOUNT:https://example.org/new?token={token}"
    assert new(config, "HEAD", token, store).status == 301
    assert store.used(invite.id) == 0
    posted = new(config, "POST", token, store)
    assert posted.status == 200
    email = json.loads(posted.body)["email"]
    assert store.handed_out(email)
    again = new(config, "POST", token, store)
    assert (again.status, again.body) == (403, newemail.REFUSALS[USED_UP].encode() + b"\n")


@pytest.mark.parametrize(
    ("token", "reason"),
    [(None, MISSING), ("nonsense-token-xyz", INVALID), ("../../etc/x", INVALID)],
)
def test_new_in_invite_mode_without_a_good_token(
    config: Config, store: InviteStore, token: str | None, reason: str
) -> None:
    registration.write_state(config.registration_path, "invite", None)
    for method in ("GET", "POST"):
        answer = new(config, method, token, store)
        assert answer.status == 403
        assert answer.body.decode().strip() == newemail.REFUSALS[reason]
    assert list(store.handed.iterdir()) == []


def test_new_in_closed_mode(config: Config, store: InviteStore) -> None:
    registration.write_state(config.registration_path, "closed", None)
    token, _ = store.create(1, None, NOW)
    for method in ("GET", "POST"):
        answer = new(config, method, token, store)
        assert (answer.status, answer.body) == (403, b"This relay does not create new accounts.\n")


def test_new_through_the_cgi_environment(tmp_path: Path, config: Config) -> None:
    registration.write_state(config.registration_path, "invite", None)
    token, _ = InviteStore(config.registration_path).create(1, DAY, NOW)
    ini = tmp_path / "chatmail.ini"
    ini.write_text(
        f"[params]\nmail_domain = example.org\nregistration_dir = {config.registration_path}\n"
    )
    env = {"CHATMAIL_INI": str(ini), "REQUEST_METHOD": "POST", "QUERY_STRING": f"token={token}"}
    assert newemail.handle(env, io.StringIO()).status == 200
    assert newemail.handle(env, io.StringIO()).status == 403
    env["QUERY_STRING"] = ""
    assert newemail.handle(env, io.StringIO()).body.startswith(b"This relay creates accounts by")


def scraped_new_requests(metrics_dir: Path) -> dict[str, float]:
    """What chatmail-metrics serves of /new's counts, read as its scrape reads them."""
    registry = metrics.Registry()
    assert metrics.read_snapshots(metrics_dir / metrics.NEW_SUBDIR, registry) == []
    family = registry.families.get("chatmail_new_requests_total")
    return {} if family is None else {key[0][1]: n for key, n in family.samples.items()}


def test_new_counts_each_outcome_for_the_exporter(tmp_path: Path, config: Config) -> None:
    (tmp_path / "metrics" / metrics.NEW_SUBDIR).mkdir(parents=True)
    registration.write_state(config.registration_path, "invite", None)
    token, _ = InviteStore(config.registration_path).create(1, DAY, NOW)
    ini = tmp_path / "chatmail.ini"
    ini.write_text(
        f"[params]\nmail_domain = example.org\nregistration_dir = {config.registration_path}\n"
    )

    def ask(method: str, query: str) -> int:
        env = {"CHATMAIL_INI": str(ini), "REQUEST_METHOD": method, "QUERY_STRING": query}
        stderr = io.StringIO()
        status = newemail.handle(env, stderr, tmp_path / "metrics" / metrics.NEW_SUBDIR).status
        assert stderr.getvalue() == ""
        return status

    assert ask("POST", f"token={token}") == 200
    assert ask("POST", f"token={token}") == 403
    assert ask("POST", "") == 403
    assert ask("GET", "token=nonsense-token-xyz") == 403
    assert ask("PUT", "") == 405  # not an answer about credentials: not counted
    assert ask("GET", "") == 403
    registration.write_state(config.registration_path, "closed", None)
    assert ask("POST", "") == 403
    assert scraped_new_requests(tmp_path / "metrics") == {
        "handed_out": 1,
        USED_UP: 1,
        MISSING: 2,
        INVALID: 1,
        "closed": 1,
    }
    snapshot = (tmp_path / "metrics" / metrics.NEW_SUBDIR / newemail.SNAPSHOT).read_text()
    assert token not in snapshot and "example.org" not in snapshot


def test_without_the_deployed_directory_nothing_is_counted(tmp_path: Path) -> None:
    stderr = io.StringIO()
    newemail.count(MISSING, tmp_path / metrics.NEW_SUBDIR, stderr)
    assert (list(tmp_path.iterdir()), stderr.getvalue()) == ([], "")


def test_concurrent_requests_are_all_counted(tmp_path: Path) -> None:
    directory = tmp_path / metrics.NEW_SUBDIR
    directory.mkdir()
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda _: newemail.count(MISSING, directory, io.StringIO()), range(200)))
    assert scraped_new_requests(tmp_path) == {MISSING: 200}


@pytest.mark.parametrize("damage", [b"", b"{", b'{"x": 1}', b"\xff" * 10])
def test_a_damaged_count_starts_again_and_the_request_is_answered(
    tmp_path: Path, damage: bytes
) -> None:
    directory = tmp_path / metrics.NEW_SUBDIR
    directory.mkdir()
    (directory / newemail.SNAPSHOT).write_bytes(damage)
    stderr = io.StringIO()
    newemail.count(MISSING, directory, stderr)
    assert (
        stderr.getvalue()
        == f"newemail: {directory / newemail.SNAPSHOT} was damaged: counting from 0\n"
    )
    assert scraped_new_requests(tmp_path) == {MISSING: 1}


def test_an_unwritable_count_is_one_line_and_no_failure(tmp_path: Path) -> None:
    directory = tmp_path / metrics.NEW_SUBDIR
    directory.mkdir()
    (directory / newemail.SNAPSHOT).mkdir()  # a directory where the snapshot belongs
    stderr = io.StringIO()
    newemail.count(MISSING, directory, stderr)
    assert stderr.getvalue().startswith("newemail: not counted in ")
    assert len(stderr.getvalue().splitlines()) == 1


# --- doveauth ------------------------------------------------------------------------


PLENTY = Readings(load_1m=0.1, available_memory=8 * 2**30, free_disk=100 * 2**30)


def first_login(auth: AuthDict, addr: str, password: str) -> bool:
    key = f'shared/passdb/{password}"{addr}'
    return asyncio.run(auth.lookup(key, addr)) is not None


def refusals(auth: AuthDict) -> dict[str, float]:
    return {key[0][1]: n for key, n in auth.refused.samples.items()}


def make_auth(config: Config, tmp_path: Path) -> AuthDict:
    return AuthDict(config, nocreate_file=tmp_path / "nocreate", take_readings=lambda _: PLENTY)


def test_closed_mode_refuses_new_accounts_not_existing_ones(config: Config, tmp_path: Path) -> None:
    auth = make_auth(config, tmp_path)
    assert first_login(auth, "existing1@example.org", "pass-word-1")
    registration.write_state(config.registration_path, "closed", None)
    assert not first_login(auth, "newcomer1@example.org", "pass-word-1")
    assert first_login(auth, "existing1@example.org", "pass-word-1")
    assert refusals(auth) == {"closed": 1}
    assert not (config.mailboxes_path / "newcomer1@example.org").exists()


def test_invite_mode_creates_only_what_new_handed_out(
    config: Config, store: InviteStore, tmp_path: Path
) -> None:
    auth = make_auth(config, tmp_path)
    registration.write_state(config.registration_path, "invite", None)
    token, _ = store.create(1, None, NOW)
    result = store.redeem(token, NOW, counter())
    assert isinstance(result, tuple)
    email, password = result
    assert not first_login(auth, "stranger1@example.org", "pass-word-1")
    # a handed-out address in another spelling: Dovecot lowercases before asking
    assert not first_login(auth, "../handed/" + email, password)
    assert first_login(auth, email, password)
    assert refusals(auth) == {"invite": 1}


@pytest.mark.parametrize("mode", ["open", "invite"])
def test_the_autorelay_switch_refuses_23_character_first_logins_in_any_mode(
    config: Config, store: InviteStore, tmp_path: Path, mode: str
) -> None:
    auth = make_auth(config, tmp_path)
    registration.write_state(config.registration_path, mode, True)
    token, _ = store.create(3, None, NOW)
    names = iter(["autorel01@example.org", "autorel02@example.org", "autorel03@example.org"])
    for _ in range(3):
        store.redeem(token, NOW, lambda: (next(names), "unused"))
    assert not first_login(auth, "autorel01@example.org", "x" * 23)
    assert first_login(auth, "autorel02@example.org", "x" * 22)
    assert first_login(auth, "autorel03@example.org", "x" * 24)
    assert refusals(auth) == {"autorelay": 1}
    registration.write_state(config.registration_path, None, False)
    assert first_login(auth, "autorel01@example.org", "x" * 23)


def test_the_nocreate_file_stays_the_emergency_switch(config: Config, tmp_path: Path) -> None:
    auth = make_auth(config, tmp_path)
    (tmp_path / "nocreate").touch()
    assert not first_login(auth, "newcomer1@example.org", "pass-word-1")
    assert refusals(auth) == {"nocreate": 1}


# --- chatmail-accounts registration and invite --------------------------------------------------


def tool(config: Config, *argv: str) -> str:
    args = accountscmd.build_parser().parse_args(["ini", *argv])
    out = io.StringIO()
    assert accountscmd.run(args, config, out, now=lambda: NOW) == 0
    return out.getvalue()


def test_registration_shows_and_sets_the_mode(config: Config) -> None:
    assert tool(config, "registration").startswith("registration open: anyone may create")
    said = tool(config, "registration", "invite", "--refuse-autorelay")
    assert said.splitlines() == [
        "registration invite: only addresses /new handed out for an invite",
        "autorelay first logins (23-character password): refused",
        "set by cmdeploy registration (chatmail.ini: registration = open, "
        "refuse_autorelay = false)",
    ]
    public = json.loads((config.registration_path / "public.json").read_text())
    assert public == {"registration": "invite"}
    assert tool(config, "registration", "invite") == said  # idempotent
    reset = tool(config, "registration", "reset")
    assert reset.startswith("run-time setting removed: chatmail.ini decides\nregistration open")
    assert "registration open" in tool(config, "registration", "reset")


def test_invite_prints_the_url_and_lists_and_revokes(config: Config) -> None:
    tool(config, "registration", "invite")
    said = tool(config, "invite", "--uses", "2", "--expires", "12h").splitlines()
    invite_id = said[0].split()[1].rstrip(":")
    assert said[0] == f"invite {invite_id}: creates 2 accounts, expires 2027-01-15 20:00 UTC"
    url = urlsplit(said[1].removeprefix("DCACCOUNT:"))
    assert (url.scheme, url.netloc, url.path) == ("https", "example.org", "/new")
    [token] = parse_qs(url.query)["token"]
    assert InviteStore(config.registration_path).check(token, NOW) is None
    listed = tool(config, "invite", "--list")
    assert listed == f"{invite_id}  0/2 used  expires 2027-01-15 20:00 UTC  valid\n"
    assert tool(config, "invite", "--revoke", invite_id).startswith(f"revoked invite {invite_id}")
    assert tool(config, "invite", "--revoke", invite_id) == (
        f"no invite {invite_id}: nothing revoked\n"
    )
    assert tool(config, "invite", "--list") == "no invites\n"


def test_an_invite_outside_invite_mode_says_so(config: Config) -> None:
    said = tool(config, "invite").splitlines()
    assert said[1] == "note: registration is open; invites matter in invite mode"


@pytest.mark.parametrize(
    "argv",
    [
        ["invite", "--uses", "0"],
        ["invite", "--uses", "many"],
        ["invite", "--expires", "forever"],
        ["registration", "openish"],
        ["registration", "--refuse-autorelay", "--allow-autorelay"],
    ],
)
def test_bad_arguments_are_one_line(
    config: Config, argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as e:
        accountscmd.build_parser().parse_args(["ini", *argv])
    assert e.value.code == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_without_the_deployed_directory(tmp_path: Path) -> None:
    config = make_config(tmp_path, registration_dir=str(tmp_path / "missing"))
    args = accountscmd.build_parser().parse_args(["ini", "registration", "closed"])
    with pytest.raises(accountscmd.AdminError, match="cmdeploy run"):
        accountscmd.run(args, config, io.StringIO())
    assert not os.path.exists(tmp_path / "missing")


def test_an_invite_on_a_self_signed_relay_also_names_the_browser_url(tmp_path: Path) -> None:
    InviteStore(tmp_path / "reg").make_dirs()
    config = make_config(
        tmp_path, mail_domain="_chat.example.org", registration_dir=str(tmp_path / "reg")
    )
    said = tool(config, "invite").splitlines()
    token = parse_qs(urlsplit(said[-2].removeprefix("DCACCOUNT:")).query)["token"][0]
    assert said[-1].endswith(f"https://_chat.example.org/new?token={token}")
