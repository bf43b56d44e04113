"""Where a job or server reads and writes: one storage parameter model, shared by compress-archive,
rehydrate and serve (their params inherit it, so `endpoint_url` and `storage_options` stay flat
fields of a Prefect deployment's `params` or a Serve config's `args`).

    p = StorageParams(endpoint_url="http://127.0.0.1:8333")
    p.check("s3://bucket/archive")               # credentials, endpoint, bucket: one line, before any work
    p.check("s3://bucket/restored", write=True)  # ... and a probe write
    fs, path = p.fs("s3://bucket/archive")

Credentials never travel as parameters: Prefect stores flow parameters and Serve keeps a config's
`args` in the cluster, so keys come from the environment (AWS_*), ~/.aws or fsspec config."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

from pipeline.storage.fs import check_source, check_writable, filesystem, secret_option_keys


class StorageParams(BaseModel):
    # validation errors never echo the input: it may hold storage options
    model_config = ConfigDict(hide_input_in_errors=True)

    endpoint_url: str | None = Field(
        None, description="S3-compatible endpoint for s3:// URIs (default: AWS_ENDPOINT_URL, ~/.aws/config, AWS)")
    storage_options: dict = Field(
        default_factory=dict, repr=False,
        description="extra fsspec options (no credentials: parameters are stored by Prefect / Serve; use the "
        "environment, ~/.aws or fsspec config)")

    @field_validator("storage_options")
    @classmethod
    def _no_credentials(cls, v: dict) -> dict:
        found = secret_option_keys(v)
        if found:
            raise ValueError(
                f"storage_options must not carry credentials ({', '.join(found)}): parameters are stored by Prefect "
                "or Serve and sent to every worker. Use AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, ~/.aws or fsspec config"
            )
        return v

    def fs(self, uri: str):
        """(fsspec filesystem, path without scheme) of `uri` with this endpoint and these options."""
        return filesystem(uri, self.storage_options, self.endpoint_url)

    def fsspec_options(self) -> dict:
        """fsspec options with the endpoint folded in, for readers that take options only
        (ManifestReader, find_row, rehydrate_row...)."""
        options = dict(self.storage_options)
        if self.endpoint_url:
            options["client_kwargs"] = {**options.get("client_kwargs", {}), "endpoint_url": self.endpoint_url}
        return options

    def check(self, uri: str, *, write: bool = False, source: bool = False) -> None:
        """Before any work, a StorageConfigError whose message is one line saying what to fix:
        missing credentials, an unreachable endpoint or a missing bucket (s3:// URIs: one HeadBucket);
        with `source`, a location holding nothing (pipeline.storage.fs.check_source); with `write`, one
        that refuses a probe write (check_writable)."""
        from pipeline.storage.s3 import check_access

        fs, path = self.fs(uri)
        check_access(fs, path)
        if source:
            check_source(fs, path, uri)
        if write:
            check_writable(fs, path, uri)
