"""Deploy-time storage settings, from the environment (``EMU35_STORAGE_*``), YAML or Helm
values passed as keyword arguments, which take precedence over the environment."""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.storage.layout import validate_key

MiB = 1024 * 1024


class StorageSettings(BaseSettings):
    """Which ResultStore to build and how. Unknown fields are errors (typos fail loudly)."""

    model_config = SettingsConfigDict(env_prefix="EMU35_STORAGE_", frozen=True,
                                      extra="forbid")

    backend: Literal["local", "s3"] = "local"
    # local: files under root (the single-machine default; set it to keep results)
    root: Path = Path(tempfile.gettempdir()) / "emu35-results"
    # s3: bucket, optional key prefix, endpoint for S3-compatible servers
    bucket: str = ""
    prefix: str = ""
    endpoint_url: str | None = None
    region: str | None = None
    # None: boto3's standard chain (AWS_* env, config files, instance or pod role)
    access_key: str | None = None
    secret_key: SecretStr | None = None
    session_token: SecretStr | None = None
    presign_expiry_s: int = Field(3600, ge=1, le=7 * 24 * 3600)
    multipart_threshold: int = Field(8 * MiB, ge=5 * MiB)
    max_attempts: int = Field(5, ge=1, le=20)
    create_bucket: bool = False

    @field_validator("prefix")
    @classmethod
    def _prefix_is_a_key(cls, v: str) -> str:
        v = v.strip("/")
        return validate_key(v, "prefix") if v else ""

    @model_validator(mode="after")
    def _backend_has_what_it_needs(self) -> StorageSettings:
        if self.backend == "s3":
            if not 3 <= len(self.bucket) <= 63:
                raise ValueError("bucket: the s3 backend needs a bucket name (3-63 characters)"
                                 "; set EMU35_STORAGE_BUCKET")
            if (self.access_key is None) != (self.secret_key is None):
                raise ValueError("access_key/secret_key: give both or neither")
        return self
