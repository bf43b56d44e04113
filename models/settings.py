"""What the model layer reads from the environment: where fine-tuned pairs are registered and where
fetched weights are cached. `pipeline.settings.Settings` extends this class, so the whole table of
taid-archive's settings stays in one place (docs/settings.md) while models/ imports nothing from
pipeline/ (the model layer sits below the pipeline)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class ModelSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TAID_", extra="ignore", case_sensitive=False)

    model_registry: str | None = Field(None, description="model registry URI for fine-tuned model ids "
                                       "(models/registry.py); a job's `registry` parameter wins")
    cache_dir: Path = Field(Path.home() / ".cache" / "taid-archive" / "weights",
                            description="local cache of weights fetched from the registry (sha256-checked)")


def get_model_settings() -> ModelSettings:
    """Read anew on each call (cheap), like pipeline.settings.get_settings."""
    return ModelSettings()
