"""Object keys: validation and the per-request layout (DESIGN.md §3 step 5, §7).

Keys are relative to the store (an S3 store puts its own prefix in front). They are
"/"-separated segments of [A-Za-z0-9._-]; a segment may not start with "." (so no ".", "..",
hidden files, nor the local store's ".meta" tree and temporary files), and there is no leading,
trailing or doubled "/". Every check raises ValueError naming the field.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

MAX_KEY_LEN = 1024  # S3's limit on a whole object key
_SEGMENT = r"[A-Za-z0-9_-][A-Za-z0-9._-]*"
_KEY_RE = re.compile(rf"{_SEGMENT}(?:/{_SEGMENT})*")
_NAME_RE = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}")


def validate_key(key: object, field: str = "key") -> str:
    """Return ``key`` if it is a well-formed object key (or prefix), else raise ValueError."""
    if not isinstance(key, str) or not key:
        raise ValueError(f"{field}: must be a non-empty string, got {key!r}")
    if len(key) > MAX_KEY_LEN:
        raise ValueError(f"{field}: longer than {MAX_KEY_LEN} characters")
    if not _KEY_RE.fullmatch(key):
        raise ValueError(f"{field}: {key!r} is not a valid key: use '/'-separated segments of "
                         "[A-Za-z0-9._-], none empty or starting with '.', no leading '/'")
    return key


def validate_name(value: object, field: str) -> str:
    """A tenant or request id: one key segment, 1-128 characters."""
    if not isinstance(value, str) or not _NAME_RE.fullmatch(value):
        raise ValueError(f"{field}: {value!r} is invalid: use 1-128 characters of "
                         "[A-Za-z0-9._-], not starting with '.'")
    return value


@dataclass(frozen=True)
class RequestLayout:
    """Where one request's results live: ``{tenant}/{request_id}/...`` under the store's prefix.

    The tenant is part of every key so that tenants' results never share a folder and access
    can be scoped per tenant prefix.
    """

    tenant: str
    request_id: str

    def __post_init__(self) -> None:
        validate_name(self.tenant, "tenant")
        validate_name(self.request_id, "request_id")

    @property
    def root(self) -> str:
        """The request's folder (pass it to ResultStore.delete_prefix)."""
        return f"{self.tenant}/{self.request_id}"

    def image(self, index: int) -> str:
        """Key of the index-th output image (0-based), a PNG."""
        if not isinstance(index, int) or isinstance(index, bool) or index < 0:
            raise ValueError(f"index: must be an integer >= 0, got {index!r}")
        return f"{self.root}/images/{index:02d}.png"

    @property
    def story(self) -> str:
        """Key of the reference-compatible Story protobuf."""
        return f"{self.root}/story.pb"

    @property
    def manifest(self) -> str:
        """Key of the JSON manifest, written last (ResultStore.write_manifest)."""
        return f"{self.root}/manifest.json"

    @property
    def claim(self) -> str:
        """Key of the claim: written create-only when the request starts, so a request_id is
        used once per tenant (a second claim raises AlreadyExists)."""
        return f"{self.root}/claim.json"


@dataclass(frozen=True)
class BatchLayout:
    """Where one prompt of an ``emu35 generate`` batch goes: flat folders shared by the batch,
    ``images/{name}_{i:02d}.png`` and ``proto/{name}.pb``; the batch has one manifest,
    ``manifest.json``. ``tenant`` and ``request_id`` are what the manifest records."""

    request_id: str  # the prompt's name
    tenant: str = "local"

    def __post_init__(self) -> None:
        validate_name(self.tenant, "tenant")
        validate_name(self.request_id, "name")

    def image(self, index: int) -> str:
        if not isinstance(index, int) or isinstance(index, bool) or index < 0:
            raise ValueError(f"index: must be an integer >= 0, got {index!r}")
        return f"images/{self.request_id}_{index:02d}.png"

    @property
    def story(self) -> str:
        return f"proto/{self.request_id}.pb"
