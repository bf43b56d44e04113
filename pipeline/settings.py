"""Everything taid-archive reads from the environment, in one place (docs/settings.md has the table).

    from pipeline.settings import get_settings
    get_settings().ray_address          # TAID_RAY_ADDRESS

Job parameters (CompressArchiveParams, RehydrateParams) say what one run does and are stored by
Prefect; settings say where this machine finds its cluster, registry and credentials, and are
never stored with a run. Storage credentials are read by botocore itself (AWS_* variables,
~/.aws); they appear here only so that error messages and pyarrow's S3 client see the same values.

Settings are read anew on each `get_settings()` call (cheap): a test or a worker that changes the
environment sees the change.
"""

from __future__ import annotations

from typing import Literal

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import SettingsConfigDict

from models.settings import ModelSettings

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]
LOGGERS = ("pipeline", "models", "flows")  # the loggers `log_level` sets (libraries stay at WARNING)


class Settings(ModelSettings):
    """Every setting; `model_registry` and `cache_dir` come from models.settings.ModelSettings."""

    model_config = SettingsConfigDict(env_prefix="TAID_", extra="ignore", case_sensitive=False)

    ray_address: str = Field("", description="Ray cluster for compress and rehydrate jobs when a run names none "
                             "(e.g. ray://head:10001 or auto); empty: a fresh local Ray")
    serve_token: SecretStr | None = Field(None, description="bearer token of `taid serve` (the --token flag wins)")
    log_level: LogLevel = Field("INFO", description="level of the taid loggers (the --log-level flag wins)")
    precision: Literal["auto", "fp32", "tf32", "bf16", "fp16"] | None = Field(
        None, description="numeric precision of the networks where a job sets none (pipeline/codec/inference.py): auto = "
        "fp32 on a CPU, bf16 on CUDA; lets an operator switch a deployment's actors without a code change")
    use_prefect: Literal["auto", "always", "never"] = Field(
        "auto", description="CLI runs of compress-archive / rehydrate: through the Prefect flow (always), the job "
        "layer directly (never), or the flow only when a Prefect API URL is configured (auto); --prefect / "
        "--no-prefect win")
    prices: str | None = Field(None, description="price table (JSON or TOML file, local path or URI) over the "
                               "built-in list prices for the cost report (pipeline/jobs/prices.py); a job's `prices` "
                               "parameter wins")
    # storage: read by botocore/s3fs themselves; named here for our error messages and pyarrow's S3
    aws_endpoint_url: str | None = Field(None, validation_alias=AliasChoices("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"),
                                         description="S3-compatible endpoint (a job's endpoint_url wins)")
    aws_region: str | None = Field(None, validation_alias=AliasChoices("AWS_REGION", "AWS_DEFAULT_REGION"))
    aws_access_key_id: str | None = Field(None, validation_alias="AWS_ACCESS_KEY_ID")
    aws_secret_access_key: SecretStr | None = Field(None, validation_alias="AWS_SECRET_ACCESS_KEY")


def get_settings() -> Settings:
    return Settings()
