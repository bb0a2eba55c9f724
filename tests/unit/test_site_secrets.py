"""Secrets of a multi-site configuration: each site's password_file is read into that site's
settings, and every site's password is hidden from the logs and from check-config."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from bridge import config
from bridge.ops import logs


@pytest.fixture
def sites(tmp_path: Path) -> config.Settings:
    """Three sites: two with a password file (one also written inline, which wins), one with
    its password in the file, and the top level's own password from a file."""
    (tmp_path / "north.pw").write_text("north-secret-7a1\n", encoding="utf-8")
    (tmp_path / "south.pw").write_text("unused-secret-9c4\n", encoding="utf-8")
    (tmp_path / "top.pw").write_text("top-secret-3e8\n", encoding="utf-8")
    path = tmp_path / "sites.yaml"
    path.write_text(
        f"sensaphone: {{user: t, password_file: {tmp_path / 'top.pw'}}}\n"
        "sites:\n"
        f"  - {{name: north, sensaphone: {{user: n, password_file: {tmp_path / 'north.pw'}}}}}\n"
        "  - name: south\n"
        "    sensaphone:\n"
        "      user: s\n"
        "      password: south-secret-5d2\n"
        f"      password_file: {tmp_path / 'south.pw'}\n"
        "  - {name: west, sensaphone: {user: w, password: west-secret-0b6}}\n"
        "  - {name: east}\n",
        encoding="utf-8",
    )
    return config.load({"IOTBRIDGE_CONFIG": str(path)})


SITE_PASSWORDS = {
    "north": "north-secret-7a1",
    "south": "south-secret-5d2",
    "west": "west-secret-0b6",
    "east": None,
}
SECRETS = ["top-secret-3e8", "north-secret-7a1", "south-secret-5d2", "west-secret-0b6"]


def test_each_site_logs_in_with_its_own_password(sites: config.Settings) -> None:
    built = {name: site.sensaphone for name, site in config.per_site(sites)}
    assert {name: s.password for name, s in built.items()} == SITE_PASSWORDS
    assert {name: s.user for name, s in built.items()} == {
        "north": "n",
        "south": "s",
        "west": "w",
        "east": "",
    }


def test_every_site_password_is_a_secret(sites: config.Settings) -> None:
    assert sorted(config.secrets_of(sites)) == sorted(SECRETS)
    shown = repr(config.redacted(sites))
    for password in SECRETS:
        assert password not in shown


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_a_site_password_in_a_log_line_is_scrubbed(
    sites: config.Settings,
    restore_logging: object,
    capsys: pytest.CaptureFixture[str],
    fmt: str,
) -> None:
    logs.configure("info", fmt, config.secrets_of(sites))
    log = logging.getLogger("bridge.test")
    for name, password in SITE_PASSWORDS.items():
        log.warning("site %s: login with %s refused", name, password)
    try:
        raise ValueError("north-secret-7a1 rejected")  # noqa: TRY301
    except ValueError:
        log.exception("upstream failed")
    err = capsys.readouterr().err
    for password in SECRETS:
        assert password not in err
    assert "site north: login with *** refused" in err
    assert "site west: login with *** refused" in err
    assert "ValueError: *** rejected" in err
