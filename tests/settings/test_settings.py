"""One Settings for the environment: TAID_* variables reach the code through it, and
docs/settings.md names every one of them."""

from __future__ import annotations


from pipeline.settings import Settings, get_settings
from tests import ROOT

DOC = ROOT / "docs" / "settings.md"


def env_names(name: str, field) -> list[str]:
    alias = field.validation_alias
    if alias is None:
        return ["TAID_" + name.upper()]
    return list(getattr(alias, "choices", [alias]))


def test_every_setting_is_documented():
    doc = DOC.read_text()
    missing = [env for name, f in Settings.model_fields.items() for env in env_names(name, f) if f"`{env}`" not in doc]
    assert missing == []


def test_settings_come_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("TAID_RAY_ADDRESS", "ray://head:10001")
    monkeypatch.setenv("TAID_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("TAID_LOG_LEVEL", "WARNING")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    s = get_settings()
    assert (s.ray_address, s.cache_dir, s.log_level, s.aws_endpoint_url) == (
        "ray://head:10001", tmp_path, "WARNING", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:8")  # botocore's precedence: the S3-specific one
    assert get_settings().aws_endpoint_url == "http://127.0.0.1:8"


def test_registry_setting_reaches_load_pair(monkeypatch, tmp_path):
    """An id unknown to the zoo is looked up in TAID_MODEL_REGISTRY (read through Settings)."""
    import pytest

    from models.zoo import WeightsError, load_pair

    monkeypatch.setenv("TAID_MODEL_REGISTRY", str(tmp_path / "registry"))
    with pytest.raises(WeightsError) as err:
        load_pair("no-such-model")
    assert f"not registered in {tmp_path / 'registry'}" in str(err.value)  # looked up there, not only in the zoo
