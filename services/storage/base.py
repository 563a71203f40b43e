"""The ResultStore contract: where decoded images, Stories and manifests go (DESIGN.md §3, §7).

Writes are idempotent: keys are deterministic (RequestLayout), and putting a key again
replaces the object atomically, so a retried job item rewrites the same objects instead of
adding new ones. A create-only put (``create=True``) never replaces: it raises AlreadyExists
when another object is there (local files: an exclusive link; S3: a conditional PUT,
``If-None-Match: *``), which is how a request claims its request_id. Every object carries the
hex SHA-256 of its bytes, computed here, stored as object metadata and checked again on every
``get``.

Backends implement the underscored primitives; the public methods validate their arguments
(ValueError naming the field) and are the same for every backend. Methods are blocking and
thread-safe; the ``a``-prefixed twins (``aput``, ``aget``, ...) run them in a worker thread so
that an event loop keeps serving other requests while one store call waits on the disk or S3.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import re
from abc import ABC, abstractmethod
from typing import Any

from services.storage.layout import RequestLayout, validate_key
from services.storage.records import (AlreadyExists, ObjectMeta, ObjectNotFound, ResultRef,
                                      StorageError)

MAX_EXPIRY_S = 7 * 24 * 3600  # SigV4 presigned URLs cannot live longer
MANIFEST_VERSION = 1
_CONTENT_TYPE_RE = re.compile(r"[\x21-\x7e][\x20-\x7e]{0,254}")
_INT32_MAX = 2**31 - 1
_READ_TRIES = 3  # a local read can race an overwrite (bytes and sidecar are two files)


class ResultStore(ABC):
    """Stores result objects under validated keys and hands out ResultRefs."""

    presign_expiry_s: int = 3600  # lifetime of the presigned URLs in refs this store makes

    # ---- public API -----------------------------------------------------------------------

    def put(self, key: str, data: bytes, content_type: str, width: int = 0,
            height: int = 0, *, create: bool = False) -> ResultRef:
        """Store ``data`` under ``key`` (replacing any object there, atomically) and return
        its ref. ``width``/``height`` are pixels for images, 0 otherwise.

        ``create=True``: only if no object is there, else AlreadyExists. A create that finds
        its own bytes already stored (a retry after a lost answer) succeeds."""
        validate_key(key)
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"data: must be bytes, got {type(data).__name__}")
        data = bytes(data)
        if not isinstance(content_type, str) or not _CONTENT_TYPE_RE.fullmatch(content_type):
            raise ValueError(f"content_type: {content_type!r} is not a printable MIME type")
        meta = ObjectMeta(sha256=hashlib.sha256(data).hexdigest(), size=len(data),
                          content_type=content_type, width=_dimension(width, "width"),
                          height=_dimension(height, "height"))
        if not create:
            self._write(key, data, meta)
        else:
            try:
                self._write_new(key, data, meta)
            except AlreadyExists:
                if not self._stored_with(key, meta.sha256):
                    raise
        return self._ref(key, meta)

    def get(self, key: str) -> bytes:
        """The object's bytes, after checking them against the stored SHA-256.

        Raises ObjectNotFound if there is none, StorageError if the bytes do not match."""
        validate_key(key)
        for _ in range(_READ_TRIES):
            data, meta = self._read(key)
            if hashlib.sha256(data).hexdigest() == meta.sha256:
                return data
        raise StorageError(f"{key}: stored bytes do not match their sha256 {meta.sha256}")

    def exists(self, key: str) -> bool:
        validate_key(key)
        try:
            self._stat(key)
        except ObjectNotFound:
            return False
        return True

    def ref_for(self, key: str) -> ResultRef:
        """Rebuild the ref of a stored object from its metadata (with a fresh presigned URL)."""
        validate_key(key)
        return self._ref(key, self._stat(key))

    def url_for(self, key: str, expires_s: int | None = None) -> str:
        """A time-limited HTTP GET URL for the object ("" where the backend has none, as for
        local files). It is made without a round trip, so it is not proof that the object
        exists. ``expires_s`` defaults to the store's ``presign_expiry_s``."""
        validate_key(key)
        expires_s = self.presign_expiry_s if expires_s is None else expires_s
        return self._presign(key, validate_expiry(expires_s, "expires_s"))

    def delete_prefix(self, prefix: str) -> int:
        """Delete the object ``prefix`` and every object in the folder ``prefix/``; return how
        many were deleted. Folder semantics on purpose: "t/req1" never touches "t/req10/..."."""
        return self._delete_prefix(validate_key(prefix, "prefix"))

    def request_layout(self, request_id: str, tenant: str = "default") -> RequestLayout:
        """The keys of one request's images, Story and manifest."""
        return RequestLayout(tenant=tenant, request_id=request_id)

    def write_manifest(self, request_id: str, manifest: dict[str, Any],
                       tenant: str = "default", *, create: bool = False) -> ResultRef:
        """Write the request's JSON manifest. MUST be called last, after every object of the
        request is stored: the manifest is the commit marker (readers treat a request as
        complete once its manifest exists) and it records the refs of everything else.

        ``manifest`` is any JSON-ready dict; ResultRef values anywhere in it are written as
        dicts without their presigned URL (the manifest outlives it: call ``url_for``). Each
        such ref must point at an object of this store that is stored with the same sha256,
        else StorageError: that catches a manifest written before its objects. The header
        fields ``manifest_version``, ``tenant`` and ``request_id`` are added (docs/manifest.md).
        ``create=True``: AlreadyExists if the request has a manifest already.
        """
        layout = self.request_layout(request_id, tenant)
        if not isinstance(manifest, dict):
            raise TypeError(f"manifest: must be a dict, got {type(manifest).__name__}")
        header = {"manifest_version": MANIFEST_VERSION, "tenant": tenant,
                  "request_id": request_id}
        for name, value in header.items():
            if name in manifest and manifest[name] != value:
                raise ValueError(f"manifest: {name!r} is {manifest[name]!r}, expected {value!r}")
        body = self.encode_manifest({**manifest, **header})
        return self.put(layout.manifest, body, "application/json", create=create)

    def encode_manifest(self, manifest: dict[str, Any]) -> bytes:
        """A manifest's JSON bytes (sorted keys). Each ResultRef in it must be stored with its
        sha256 (else StorageError) and is written as a dict with its store ``key`` and without
        the presigned URL."""
        if not isinstance(manifest, dict):
            raise TypeError(f"manifest: must be a dict, got {type(manifest).__name__}")
        for ref in _refs_in(manifest):
            self._check_stored(ref)

        def as_json(value: Any) -> Any:
            if isinstance(value, ResultRef):
                return {"key": self.key_for_uri(value.uri), **value.to_dict(with_url=False)}
            raise TypeError(f"{type(value).__name__} is not JSON-serialisable")

        try:
            return json.dumps(manifest, default=as_json, sort_keys=True, indent=1).encode()
        except (TypeError, ValueError) as e:
            raise ValueError(f"manifest: not JSON-serialisable: {e}") from None

    def read_manifest(self, request_id: str, tenant: str = "default") -> dict[str, Any]:
        """The manifest as written (refs as dicts: ``ResultRef.from_dict`` rebuilds them)."""
        return json.loads(self.get(self.request_layout(request_id, tenant).manifest))

    # ---- async twins: the blocking call in a worker thread ------------------------------------

    async def aput(self, key: str, data: bytes, content_type: str, width: int = 0,
                   height: int = 0, *, create: bool = False) -> ResultRef:
        return await asyncio.to_thread(self.put, key, data, content_type, width, height,
                                       create=create)

    async def aget(self, key: str) -> bytes:
        return await asyncio.to_thread(self.get, key)

    async def aexists(self, key: str) -> bool:
        return await asyncio.to_thread(self.exists, key)

    async def adelete_prefix(self, prefix: str) -> int:
        return await asyncio.to_thread(self.delete_prefix, prefix)

    async def awrite_manifest(self, request_id: str, manifest: dict[str, Any],
                              tenant: str = "default", *, create: bool = False) -> ResultRef:
        return await asyncio.to_thread(self.write_manifest, request_id, manifest, tenant,
                                       create=create)

    # ---- backend primitives -----------------------------------------------------------------

    @abstractmethod
    def uri(self, key: str) -> str:
        """The object's URI ("file:///...", "s3://bucket/...")."""

    @abstractmethod
    def key_for_uri(self, uri: str) -> str:
        """Inverse of ``uri``; ValueError if the URI does not belong to this store."""

    @abstractmethod
    def _write(self, key: str, data: bytes, meta: ObjectMeta) -> None:
        """Store bytes and metadata; a reader sees the old object or the new one, never a
        partial one."""

    @abstractmethod
    def _write_new(self, key: str, data: bytes, meta: ObjectMeta) -> None:
        """Like ``_write``, but only if no object is stored under ``key``, decided atomically
        (two concurrent creators: one wins, the other gets AlreadyExists)."""

    @abstractmethod
    def _read(self, key: str) -> tuple[bytes, ObjectMeta]:
        """Bytes and metadata; ObjectNotFound if absent."""

    @abstractmethod
    def _stat(self, key: str) -> ObjectMeta:
        """Metadata only; ObjectNotFound if absent."""

    @abstractmethod
    def _presign(self, key: str, expires_s: int) -> str:
        """A GET URL valid for ``expires_s`` seconds, or "" where the backend has none."""

    @abstractmethod
    def _delete_prefix(self, prefix: str) -> int:
        """See ``delete_prefix``; ``prefix`` is already validated."""

    # ---- helpers ----------------------------------------------------------------------------

    def _ref(self, key: str, meta: ObjectMeta) -> ResultRef:
        return ResultRef(uri=self.uri(key), presigned_url=self._presign(key, self.presign_expiry_s),
                         sha256=meta.sha256, bytes=meta.size, width=meta.width,
                         height=meta.height, content_type=meta.content_type)

    def _stored_with(self, key: str, sha256: str) -> bool:
        try:
            return self._stat(key).sha256 == sha256
        except ObjectNotFound:
            return False

    def _check_stored(self, ref: ResultRef) -> None:
        try:
            key = self.key_for_uri(ref.uri)
        except ValueError as e:
            raise ValueError(f"manifest: {e}") from None
        try:
            meta = self._stat(key)
        except ObjectNotFound:
            raise StorageError(f"manifest: {ref.uri} is not stored; write the manifest last, "
                               "after every object it lists") from None
        if meta.sha256 != ref.sha256:
            raise StorageError(f"manifest: {ref.uri} was overwritten since its ref was made "
                               f"(sha256 {meta.sha256}, ref says {ref.sha256})")


def validate_expiry(expires_s: object, field: str) -> int:
    if not isinstance(expires_s, int) or isinstance(expires_s, bool) \
            or not 1 <= expires_s <= MAX_EXPIRY_S:
        raise ValueError(f"{field}: must be an integer number of seconds in [1, {MAX_EXPIRY_S}],"
                         f" got {expires_s!r}")
    return expires_s


def _dimension(value: object, field: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= _INT32_MAX:
        raise ValueError(f"{field}: must be an integer >= 0 (pixels, 0 if not an image), "
                         f"got {value!r}")
    return value


def _refs_in(value: Any) -> list[ResultRef]:
    if isinstance(value, ResultRef):
        return [value]
    if isinstance(value, dict):
        return [r for v in value.values() for r in _refs_in(v)]
    if isinstance(value, (list, tuple)):
        return [r for v in value for r in _refs_in(v)]
    return []
