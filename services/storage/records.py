"""Records and errors of the result store (DESIGN.md §2-3, §7)."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


class StorageError(RuntimeError):
    """The store could not do what was asked: backend unreachable, access denied, bucket
    missing, stored bytes that do not match their checksum."""


class ObjectNotFound(StorageError):
    """No object is stored under the key."""


class AlreadyExists(StorageError):
    """A create-only write found an object (or a creation under way) at its key."""


@dataclass(frozen=True)
class ObjectMeta:
    """What a backend stores next to an object's bytes (S3 object metadata, a local sidecar)."""

    sha256: str        # hex SHA-256 of the bytes, computed by ResultStore.put
    size: int          # bytes
    content_type: str
    width: int = 0     # pixels, for images; 0 otherwise
    height: int = 0


@dataclass(frozen=True)
class ResultRef:
    """A stored result, as the stages and the client see it (mirrors emu35.v1.ResultRef)."""

    uri: str            # "file:///abs/path" or "s3://bucket/key"
    presigned_url: str  # time-limited HTTP GET URL (S3); "" for local files, read them directly
    sha256: str         # hex SHA-256 of the object's bytes
    bytes: int          # object size
    width: int = 0      # pixels, for images; 0 otherwise
    height: int = 0
    content_type: str = "application/octet-stream"

    def to_dict(self, with_url: bool = True) -> dict[str, Any]:
        """JSON-ready dict. Manifests leave the URL out: they outlive it (url_for makes one)."""
        out = asdict(self)
        if not with_url:
            del out["presigned_url"]
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ResultRef:
        return cls(uri=d["uri"], presigned_url=d.get("presigned_url", ""), sha256=d["sha256"],
                   bytes=int(d["bytes"]), width=int(d.get("width", 0)),
                   height=int(d.get("height", 0)),
                   content_type=d.get("content_type", "application/octet-stream"))
