"""Result storage: where decoded images, Stories and manifests go (DESIGN.md §3-4, §7).

``make_store(StorageSettings())`` builds the configured ResultStore; the S3 backend (boto3) is
imported only when chosen. Keys come from ``ResultStore.request_layout``; the manifest is
written last with ``ResultStore.write_manifest``. Async callers use the ``a``-prefixed methods
(``aput``, ``aget``, ...), which run the blocking call in a worker thread.
"""
from __future__ import annotations

from services.storage.base import ResultStore
from services.storage.layout import BatchLayout, RequestLayout, validate_key, validate_name
from services.storage.local import LocalResultStore
from services.storage.records import AlreadyExists, ObjectNotFound, ResultRef, StorageError
from services.storage.settings import StorageSettings

__all__ = ["AlreadyExists", "BatchLayout", "LocalResultStore", "ObjectNotFound", "RequestLayout", "ResultRef", "ResultStore",
           "StorageError", "StorageSettings", "make_store", "validate_key", "validate_name"]


def make_store(settings: StorageSettings | None = None) -> ResultStore:
    """The store the settings describe (the defaults when None)."""
    settings = settings if settings is not None else StorageSettings()
    if settings.backend == "local":
        return LocalResultStore(settings.root)
    from services.storage.s3 import S3ResultStore  # boto3 only when S3 is used

    def secret(v):
        return v.get_secret_value() if v is not None else None

    return S3ResultStore(
        bucket=settings.bucket, prefix=settings.prefix, endpoint_url=settings.endpoint_url,
        region=settings.region, access_key=settings.access_key,
        secret_key=secret(settings.secret_key), session_token=secret(settings.session_token),
        presign_expiry_s=settings.presign_expiry_s,
        multipart_threshold=settings.multipart_threshold, max_attempts=settings.max_attempts,
        create_bucket=settings.create_bucket)
