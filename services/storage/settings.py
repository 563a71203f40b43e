"""Deploy-time storage settings: the ``storage`` section of the one settings model
(services/settings). Set from ``emu35 serve --config FILE``, flags, or the environment
(``EMU35_STORAGE__BUCKET`` ...); credentials only from the environment."""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from services.storage.layout import validate_key

MiB = 1024 * 1024
CREDENTIALS = ("access_key", "secret_key", "session_token")


class StorageSettings(BaseModel):
    """Which ResultStore to build and how. Unknown fields are errors (typos fail loudly)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    backend: Literal["local", "s3"] = Field("local", description="local or s3")
    root: Path = Field(Path("results"), description="local: the results directory (relative: "
                                                    "to where emu35 serve starts)")
    bucket: str = Field("", description="s3: bucket (3-63 characters)")
    prefix: str = Field("", description="s3: key prefix")
    endpoint_url: str | None = Field(None, description="s3: S3-compatible endpoint URL "
                                                       "(default: AWS)")
    region: str | None = Field(None, description="s3: region")
    # None: boto3's standard chain (AWS_* env, config files, instance or pod role)
    access_key: str | None = Field(None, description="s3: access key (environment only; "
                                                     "default: boto3's chain, AWS_*)")
    secret_key: SecretStr | None = Field(None, description="s3: secret key (environment only)")
    session_token: SecretStr | None = Field(None, description="s3: session token "
                                                              "(environment only)")
    presign_expiry_s: int = Field(3600, ge=1, le=7 * 24 * 3600,
                                  description="seconds a presigned result URL stays valid")
    multipart_threshold: int = Field(8 * MiB, ge=5 * MiB,
                                     description="s3: uploads above this many bytes go multipart")
    max_attempts: int = Field(5, ge=1, le=20, description="s3: attempts per call (retries "
                                                          "with backoff)")
    create_bucket: bool = Field(False, description="s3: create the bucket if missing")

    @field_validator("prefix")
    @classmethod
    def _prefix_is_a_key(cls, v: str) -> str:
        v = v.strip("/")
        return validate_key(v, "prefix") if v else ""

    @model_validator(mode="after")
    def _backend_has_what_it_needs(self) -> StorageSettings:
        if self.backend == "s3":
            if not 3 <= len(self.bucket) <= 63:
                raise ValueError("bucket: required with backend s3 (a bucket name of 3-63 "
                                 "characters)")
            if (self.access_key is None) != (self.secret_key is None):
                raise ValueError("access_key/secret_key: give both or neither")
        return self
