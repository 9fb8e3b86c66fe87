"""Store URLs: what `adapters.pg.parse_url` and `adapters.redis.location` accept, and that no
message about a bad URL shows any piece of the password or user name.

No server is contacted: parsing a URL and building a (not yet connected) client is all.
"""

from __future__ import annotations

import pytest
from sqlalchemy import make_url

from syncd.adapters.pg import URL_FORM, describe, parse_url
from syncd.adapters.redis import client_from_url, location
from syncd.core.errors import StoreUnavailable
from syncd.core.settings import Settings

REDIS_FORM = "redis://[[USER]:PASSWORD@]HOST[:PORT][/DB]"


def fragments(secret: str, size: int = 4) -> set[str]:
    """Every piece of `secret` long enough to give part of it away."""
    return {secret[i : i + size] for i in range(len(secret) - size + 1)}


def refusal(url: str) -> str:
    with pytest.raises(StoreUnavailable) as caught:
        parse_url(url)
    return str(caught.value)


def redis_refusal(url: str) -> str:
    with pytest.raises(StoreUnavailable) as caught:
        client_from_url(url)
    return str(caught.value)


def assert_hidden(message: str, *secrets: str) -> None:
    for secret in secrets:
        leaked = sorted(piece for piece in fragments(secret) if piece in message)
        assert not leaked, f"{leaked} of {secret!r} in {message!r}"


# -- PostgreSQL: refused, with the reason and nothing of the user info --------------------

PG_REFUSALS = [
    (
        "postgresql+psycopg://postgres:Hunter@2secret@127.0.0.1/db",
        "Hunter@2secret",
        "invalid database URL postgresql+psycopg://***@127.0.0.1/db: the password seems to "
        "contain an unencoded '@': percent-encode it as %40",
    ),
    (
        "postgresql+psycopg://postgres:pa@ss:w0rd@127.0.0.1:5432/db",
        "pa@ss:w0rd",
        "invalid database URL postgresql+psycopg://***@127.0.0.1:5432/db: the password seems "
        "to contain an unencoded '@': percent-encode it as %40",
    ),
    (
        "postgresql+psycopg://postgres:s3cr3tpw@host:abc/db",
        "s3cr3tpw",
        "invalid database URL: the port 'abc' is not a number",
    ),
    (
        "postgresql+psycopg://postgres:s3cr3tpw@host:99999/db",
        "s3cr3tpw",
        "invalid database URL: the port '99999' is out of range (1-65535)",
    ),
    (
        # No '@': "postgres:s3cr3tpw" reads as HOST:PORT, so the "port" is not quoted.
        "postgresql+psycopg://postgres:s3cr3tpw/db",
        "s3cr3tpw",
        "invalid database URL: the port is not a number",
    ),
    (
        # The '@' sits in the query: what follows it is the end of a password.
        "postgresql+psycopg://host/db?password=s3cr@3tpw0rd",
        "s3cr@3tpw0rd",
        "invalid database URL postgresql+psycopg://***@: the password seems to contain an "
        "unencoded '?', or an '@' follows it in the query: percent-encode them as %3F and %40",
    ),
    (
        "postgresql+psycopg://postgres:s3c?r3tpw@host/db",
        "s3c?r3tpw",
        "invalid database URL postgresql+psycopg://***@: the password seems to contain an "
        "unencoded '?', or an '@' follows it in the query: percent-encode them as %3F and %40",
    ),
    (
        "postgresql+psycopg://dom/acct42:s3cr3tpw@host/db",
        "dom/acct42:s3cr3tpw",
        "invalid database URL postgresql+psycopg://***@host/db: the user name seems to contain "
        "an unencoded '/', or an '@' follows the host: percent-encode them as %2F and %40",
    ),
    (
        "postgresql+psycopg://postgres:s3cr3tpw@[::1/db",
        "s3cr3tpw",
        "invalid database URL: an IPv6 host must be written [ADDRESS] or [ADDRESS]:PORT",
    ),
    (
        "postgresql+psycopg://postgres:s3cr3tpw\n@host/db",
        "s3cr3tpw",
        "invalid database URL: it contains a control character (a newline?)",
    ),
    (
        "postgresql+psycopg://postgres:s3cr3tpw@host",
        "s3cr3tpw",
        "invalid database URL postgresql+psycopg://***@host/: it names no database",
    ),
    (
        "s3cr3tpw@host/db",
        "s3cr3tpw",
        "invalid database URL: it does not start with a scheme such as postgresql+psycopg://",
    ),
    (
        "s3cr3tpw is no url",
        "s3cr3tpw",
        "invalid database URL: it does not start with a scheme such as postgresql+psycopg://",
    ),
]


@pytest.mark.parametrize(("url", "password", "expected"), PG_REFUSALS)
def test_a_bad_database_url_says_why_and_shows_no_credential(
    url: str, password: str, expected: str
) -> None:
    message = refusal(url)

    assert message == f"{expected}; expected {URL_FORM}"
    assert_hidden(message, password)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("mysql://u:s3cr3tpw@h/db", "mysql://***@h/db"),
        ("postgresql+psycopg2://u:s3cr3tpw@h:5433/db?password=s3cr3tpw", "postgresql+psycopg2://***@h:5433/db"),
        ("sqlite://s3cr3tpw/db", "sqlite://s3cr3tpw/db"),
    ],
)  # fmt: skip
def test_another_driver_is_unsupported(url: str, shown: str) -> None:
    message = refusal(url)

    assert message == f"unsupported database URL {shown}; expected {URL_FORM}"
    if "@" in url:
        assert_hidden(message, "s3cr3tpw")


def test_the_form_shown_names_every_part() -> None:
    assert URL_FORM == "postgresql+psycopg://USER[:PASSWORD]@HOST[:PORT]/DBNAME"


# -- PostgreSQL: accepted, read as SQLAlchemy reads it --------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+psycopg://postgres@127.0.0.1:5432/syncd",
        "postgresql+psycopg://postgres:Hunter%402secret@db.example:6543/app",
        "postgresql+psycopg://u:pa/ss:w0rd@host/db",  # '/' and ':' need no encoding there
        "postgresql+psycopg://u:p%3Fw@[::1]:5432/db?sslmode=require&application_name=syncd",
        "postgresql+psycopg://host/db?options=-c%20search_path%3Dx&host=/run/pg&host=/tmp",
        "postgresql+psycopg:///db?host=/var/run/postgresql",
        "postgresql+psycopg://%C3%BCser:pw@host/d%C3%A9",
    ],
)
def test_a_valid_url_reads_as_sqlalchemy_reads_it(url: str) -> None:
    parsed = parse_url(url)

    assert parsed == make_url(url)
    assert parsed.render_as_string(hide_password=False) == make_url(url).render_as_string(
        hide_password=False
    )


def test_an_encoded_at_is_part_of_the_password_and_never_shown() -> None:
    parsed = parse_url("postgresql+psycopg://postgres:Hunter%402secret@127.0.0.1:5433/app")

    assert (parsed.username, parsed.password) == ("postgres", "Hunter@2secret")
    assert (parsed.host, parsed.port, parsed.database) == ("127.0.0.1", 5433, "app")
    assert describe(parsed) == "PostgreSQL at 127.0.0.1:5433/app"
    assert_hidden(repr(parsed), "Hunter@2secret")


@pytest.mark.parametrize("scheme", ["postgresql", "postgres", "postgresql+psycopg"])
def test_libpq_schemes_mean_psycopg(scheme: str) -> None:
    assert parse_url(f"{scheme}://u@h/db").drivername == "postgresql+psycopg"


@pytest.mark.parametrize(
    ("url", "described"),
    [
        ("postgresql+psycopg://u:pw@[::1]:6000/db", "PostgreSQL at [::1]:6000/db"),
        ("postgresql+psycopg:///db", "PostgreSQL at localhost:5432/db"),
    ],
)
def test_describe_shows_host_port_and_database(url: str, described: str) -> None:
    assert describe(parse_url(url)) == described


# -- Redis ----------------------------------------------------------------------------------

REDIS_REFUSALS = [
    (
        "redis://:s3cr3tpw@127.0.0.1:abc/0",
        "s3cr3tpw",
        "invalid Redis URL: the port 'abc' is not a number",
    ),
    (
        "redis://:s3cr3tpw@127.0.0.1:70000/0",
        "s3cr3tpw",
        "invalid Redis URL: the port '70000' is out of range (1-65535)",
    ),
    (
        "redis://:s3cr3tpw",  # no '@': the password reads as a port, and is not quoted
        "s3cr3tpw",
        "invalid Redis URL: the port is not a number",
    ),
    (
        "redis://:s3cr3tpw@127.0.0.1:6379/zero",
        "s3cr3tpw",
        "invalid Redis URL: the database number 'zero' is not a number",
    ),
    (
        "redis://:s3cr/3tpw@127.0.0.1:6379/0",
        "s3cr/3tpw",
        "invalid Redis URL redis://***: an '@' follows the host: percent-encode '/', '?' and "
        "'#' in the password (%2F, %3F, %23) and any '@' outside it (%40)",
    ),
    (
        "redis://:s3cr#3tpw@127.0.0.1:6379/0",
        "s3cr#3tpw",
        "invalid Redis URL redis://***: an '@' follows the host: percent-encode '/', '?' and "
        "'#' in the password (%2F, %3F, %23) and any '@' outside it (%40)",
    ),
    (
        "redis://:s3cr[3tpw@127.0.0.1:6379/0",
        "s3cr[3tpw",
        "invalid Redis URL redis://127.0.0.1:6379/0: redis-py cannot use it: percent-encode "
        "'[', ']' and '%' in the password, and check the options in its query",
    ),
    (
        "redis://127.0.0.1:6379/0?password=s3cr3tpw&colour=s3cr3tpw",
        "s3cr3tpw",
        "invalid Redis URL redis://127.0.0.1:6379/0: redis-py cannot use it: percent-encode "
        "'[', ']' and '%' in the password, and check the options in its query",
    ),
    (
        "redis://:s3cr3tpw@[::1/0",
        "s3cr3tpw",
        "invalid Redis URL: an IPv6 host must be written [ADDRESS] or [ADDRESS]:PORT",
    ),
    (
        "http://:s3cr3tpw@127.0.0.1/0",
        "s3cr3tpw",
        "invalid Redis URL: it does not start with redis://, rediss:// or unix://",
    ),
    (
        "redis://:s3cr3tpw\r@127.0.0.1/0",
        "s3cr3tpw",
        "invalid Redis URL: it contains a control character (a newline?)",
    ),
]


@pytest.mark.parametrize(("url", "password", "expected"), REDIS_REFUSALS)
def test_a_bad_redis_url_says_why_and_shows_no_credential(
    url: str, password: str, expected: str
) -> None:
    message = redis_refusal(url)

    assert message == f"{expected}; expected {REDIS_FORM}"
    assert_hidden(message, password)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        ("redis://h", "redis://h:6379/0"),
        ("redis://user:s3cr3tpw@h:6380/2", "redis://h:6380/2"),
        ("rediss://:s3cr3tpw@h/1?db=3", "rediss://h:6379/3"),
        ("redis://h:6379/0?password=s3cr3tpw", "redis://h:6379/0"),
        ("redis://:s3cr3tpw@[::1]:7000/4", "redis://[::1]:7000/4"),
        ("unix://:s3cr3tpw@/run/redis.sock?db=1", "unix:///run/redis.sock"),
    ],
)
def test_redis_location_shows_no_user_info_or_query(url: str, shown: str) -> None:
    assert location(url) == shown


def test_an_at_in_a_redis_password_is_read_as_redis_py_reads_it() -> None:
    # redis-py ends the user info at the LAST '@', so this URL is unambiguous.
    client, shown = client_from_url("redis://:Hunter@2secret@127.0.0.1:6390/5")
    try:
        assert client.connection_pool.connection_kwargs["password"] == "Hunter@2secret"
        assert shown == "redis://127.0.0.1:6390/5"
    finally:
        client.close()


# -- Settings -------------------------------------------------------------------------------


@pytest.mark.parametrize(("url", "password"), [(url, pw) for url, pw, _ in PG_REFUSALS])
def test_settings_take_any_database_url_and_never_show_it(url: str, password: str) -> None:
    # Checked where used (a command that needs no store must not fail on it), and kept
    # out of repr: settings printed by mistake show no password.
    settings = Settings(database_url=url, redis_url="redis://:r3d1spw0rd@h/0")

    assert settings.database_url == url.strip()
    assert_hidden(repr(settings) + str(settings), password, "r3d1spw0rd")


def test_settings_trim_the_urls_and_use_psycopg() -> None:
    settings = Settings(database_url=" postgres://u@h/db\n", redis_url="redis://h/1\n")

    assert settings.database_url == "postgresql+psycopg://u@h/db"
    assert settings.redis_url == "redis://h/1"
