"""`taid serve`'s token policy (pipeline.serving.access), without Ray: a token from the caller or
TAID_SERVE_TOKEN, only its sha256 in the params; no token: loopback only unless insisted on."""

from __future__ import annotations

import hashlib

import pytest

from pipeline.errors import UserError
from pipeline.serving.access import LOOPBACK, OpenServerRefused, token_fields
from pipeline.serving.config import ServeParams
from pipeline.settings import get_settings


@pytest.fixture
def no_env_token(monkeypatch):
    monkeypatch.delenv("TAID_SERVE_TOKEN", raising=False)
    return monkeypatch  # settings are read afresh on each get_settings()


def test_a_given_token_goes_in_as_its_sha256_only(no_env_token):
    fields = token_fields("0.0.0.0", "s3cret")
    assert fields == {"token_sha256": hashlib.sha256(b"s3cret").hexdigest(), "allow_anonymous": False}
    params = ServeParams(archive="/a", **fields)
    assert "s3cret" not in params.model_dump_json()


def test_the_environment_token_is_used_and_the_flag_wins(no_env_token):
    no_env_token.setenv("TAID_SERVE_TOKEN", "from-env")
    assert get_settings().serve_token.get_secret_value() == "from-env"
    assert token_fields("10.0.0.1")["token_sha256"] == hashlib.sha256(b"from-env").hexdigest()
    assert token_fields("10.0.0.1", "flag")["token_sha256"] == hashlib.sha256(b"flag").hexdigest()


def test_without_a_token_loopback_only(no_env_token):
    for host in sorted(LOOPBACK):
        assert token_fields(host) == {"token_sha256": None, "allow_anonymous": True}
    with pytest.raises(OpenServerRefused, match="refusing to serve 0.0.0.0 without a token") as info:
        token_fields("0.0.0.0")
    assert isinstance(info.value, UserError) and info.value.exit_code == 2
    assert token_fields("0.0.0.0", insecure_open=True)["allow_anonymous"] is True


def test_cli_refuses_an_open_host_in_one_line(no_env_token, capsys):
    from flows.cli import main

    assert main(["serve", "/nowhere", "--host", "0.0.0.0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["taid serve: refusing to serve 0.0.0.0 without a token (--token or TAID_SERVE_TOKEN)"]
