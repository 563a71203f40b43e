"""ResultStore on S3 or any S3-compatible server (MinIO, SeaweedFS, Ceph RGW...).

Objects are ``s3://{bucket}/{prefix}/{key}``; the SHA-256, width and height travel as object
metadata (``x-amz-meta-*``), the content type as Content-Type. A PUT replaces an object
atomically on S3, so an overwrite is never seen half-done. Objects at or above
``multipart_threshold`` bytes go up as a multipart upload (boto3's transfer manager); smaller
ones in one PUT. Transient errors (throttling, 5xx, dropped connections) are retried by
botocore's "standard" retry mode, up to ``max_attempts`` tries per call.

A create-only write is one conditional PUT (``If-None-Match: *``): the server refuses it with
412 when the key exists, atomically (AWS S3 since 2024-08, MinIO, SeaweedFS; a server that
ignores the header would overwrite). Create-only objects (claims, manifests) are small, so
they never take the multipart path.
"""
from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from services.storage.base import ResultStore, validate_expiry
from services.storage.layout import MAX_KEY_LEN, validate_key
from services.storage.records import AlreadyExists, ObjectMeta, ObjectNotFound, StorageError

MiB = 1024 * 1024
MIN_PART_BYTES = 5 * MiB  # S3's smallest part (all but the last)
_NOT_FOUND = {"404", "NoSuchKey", "NotFound"}
# 412: the key exists; 409: another conditional write to the key is in flight
_EXISTS = {"412", "PreconditionFailed", "409", "ConditionalRequestConflict"}
_DELETE_BATCH = 1000  # DeleteObjects' limit


class S3ResultStore(ResultStore):
    """Credentials come from the arguments when given, else from boto3's standard chain
    (AWS_* environment variables, shared config and credentials files, instance or pod role).
    ``endpoint_url`` selects an S3-compatible server and turns on path-style addressing.
    The bucket is checked at construction: missing -> StorageError, or it is created when
    ``create_bucket``."""

    def __init__(self, bucket: str, prefix: str = "", endpoint_url: str | None = None,
                 region: str | None = None, access_key: str | None = None,
                 secret_key: str | None = None, session_token: str | None = None,
                 presign_expiry_s: int = 3600, multipart_threshold: int = 8 * MiB,
                 max_attempts: int = 5, create_bucket: bool = False,
                 connect_timeout_s: float = 10.0, read_timeout_s: float = 60.0) -> None:
        if not isinstance(bucket, str) or not 3 <= len(bucket) <= 63:
            raise ValueError(f"bucket: {bucket!r} is not a bucket name (3-63 characters)")
        self.bucket = bucket
        prefix = prefix.strip("/") if isinstance(prefix, str) else prefix
        self.prefix = validate_key(prefix, "prefix") if prefix else ""
        self.presign_expiry_s = validate_expiry(presign_expiry_s, "presign_expiry_s")
        if not isinstance(multipart_threshold, int) or multipart_threshold < MIN_PART_BYTES:
            raise ValueError(f"multipart_threshold: must be >= {MIN_PART_BYTES} bytes "
                             f"(S3's smallest part), got {multipart_threshold!r}")
        if not isinstance(max_attempts, int) or not 1 <= max_attempts <= 20:
            raise ValueError(f"max_attempts: must be in [1, 20], got {max_attempts!r}")
        if (access_key is None) != (secret_key is None):
            raise ValueError("access_key/secret_key: give both or neither")
        self.endpoint_url = endpoint_url
        self.transfer_config = TransferConfig(multipart_threshold=multipart_threshold,
                                              multipart_chunksize=multipart_threshold)
        config = Config(
            signature_version="s3v4",
            # total_max_attempts counts the first try; botocore's "max_attempts" would not.
            retries={"total_max_attempts": max_attempts, "mode": "standard"},
            # Virtual-host style needs wildcard DNS, which self-hosted servers rarely have.
            s3={"addressing_style": "path" if endpoint_url else "auto"},
            connect_timeout=connect_timeout_s, read_timeout=read_timeout_s)
        session = boto3.session.Session(aws_access_key_id=access_key,
                                        aws_secret_access_key=secret_key,
                                        aws_session_token=session_token)
        # SigV4 needs a region even where the server ignores it.
        region = region or session.region_name or ("us-east-1" if endpoint_url else None)
        self.client = session.client("s3", endpoint_url=endpoint_url, region_name=region,
                                     config=config)
        self._check_bucket(create_bucket)

    def __repr__(self) -> str:
        return (f"S3ResultStore(bucket={self.bucket!r}, prefix={self.prefix!r}, "
                f"endpoint_url={self.endpoint_url!r})")

    def object_key(self, key: str) -> str:
        """The S3 key of a store key (the prefix in front)."""
        full = f"{self.prefix}/{key}" if self.prefix else key
        if len(full) > MAX_KEY_LEN:
            raise ValueError(f"key: longer than {MAX_KEY_LEN} characters with the prefix")
        return full

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{self.object_key(key)}"

    def key_for_uri(self, uri: str) -> str:
        head = f"s3://{self.bucket}/" + (f"{self.prefix}/" if self.prefix else "")
        if not isinstance(uri, str) or not uri.startswith(head):
            raise ValueError(f"uri: {uri!r} is not in this store ({head})")
        return validate_key(uri[len(head):], "uri")

    def _write(self, key: str, data: bytes, meta: ObjectMeta) -> None:
        extra = {"ContentType": meta.content_type, "Metadata": _to_s3_metadata(meta)}
        with self._errors(key):
            if len(data) >= self.transfer_config.multipart_threshold:
                self.client.upload_fileobj(io.BytesIO(data), self.bucket, self.object_key(key),
                                           ExtraArgs=extra, Config=self.transfer_config)
            else:
                self.client.put_object(Bucket=self.bucket, Key=self.object_key(key), Body=data,
                                       **extra)

    def _write_new(self, key: str, data: bytes, meta: ObjectMeta) -> None:
        with self._errors(key):
            self.client.put_object(Bucket=self.bucket, Key=self.object_key(key), Body=data,
                                   ContentType=meta.content_type,
                                   Metadata=_to_s3_metadata(meta), IfNoneMatch="*")

    def _read(self, key: str) -> tuple[bytes, ObjectMeta]:
        with self._errors(key):
            resp = self.client.get_object(Bucket=self.bucket, Key=self.object_key(key))
            data = resp["Body"].read()
        return data, _from_s3_metadata(key, resp)

    def _stat(self, key: str) -> ObjectMeta:
        with self._errors(key):
            resp = self.client.head_object(Bucket=self.bucket, Key=self.object_key(key))
        return _from_s3_metadata(key, resp)

    def _presign(self, key: str, expires_s: int) -> str:
        with self._errors(key):
            return self.client.generate_presigned_url(
                "get_object", Params={"Bucket": self.bucket, "Key": self.object_key(key)},
                ExpiresIn=expires_s)

    def _delete_prefix(self, prefix: str) -> int:
        full = self.object_key(prefix)
        keys = []
        with self._errors(prefix):
            for page in self.client.get_paginator("list_objects_v2").paginate(
                    Bucket=self.bucket, Prefix=full):
                keys += [o["Key"] for o in page.get("Contents", [])
                         if o["Key"] == full or o["Key"].startswith(full + "/")]
            for i in range(0, len(keys), _DELETE_BATCH):
                batch = [{"Key": k} for k in keys[i:i + _DELETE_BATCH]]
                resp = self.client.delete_objects(Bucket=self.bucket,
                                                  Delete={"Objects": batch, "Quiet": True})
                if resp.get("Errors"):
                    err = resp["Errors"][0]
                    raise StorageError(f"prefix: deleting {err.get('Key')} failed: "
                                       f"{err.get('Code')} {err.get('Message')}")
        return len(keys)

    def _check_bucket(self, create: bool) -> None:
        where = self.endpoint_url or "AWS S3"
        try:
            self.client.head_bucket(Bucket=self.bucket)
            return
        except ClientError as e:
            code = str(e.response.get("Error", {}).get("Code", ""))
            if code in ("403", "AccessDenied"):
                raise StorageError(f"bucket: access to {self.bucket!r} at {where} denied; "
                                   "check the credentials") from None
            if code not in ("404", "NoSuchBucket", "NotFound"):
                raise StorageError(f"bucket: {self.bucket!r} at {where}: {e}") from None
        except BotoCoreError as e:
            raise StorageError(f"bucket: cannot reach {where}: {e}") from None
        if not create:
            raise StorageError(f"bucket: {self.bucket!r} does not exist at {where}; create it, "
                               "or set storage.create_bucket (EMU35_STORAGE__CREATE_BUCKET=true)")
        region = self.client.meta.region_name
        kwargs = {} if region in (None, "us-east-1") else {
            "CreateBucketConfiguration": {"LocationConstraint": region}}
        with self._errors(""):
            try:
                self.client.create_bucket(Bucket=self.bucket, **kwargs)
            except ClientError as e:  # another replica won the race: fine
                if e.response.get("Error", {}).get("Code") != "BucketAlreadyOwnedByYou":
                    raise

    def _errors(self, key: str):
        return _s3_errors(self, key)


@contextmanager
def _s3_errors(store: S3ResultStore, key: str) -> Iterator[None]:
    """Maps botocore errors to ObjectNotFound / StorageError naming the object."""
    try:
        yield
    except ClientError as e:
        code = str(e.response.get("Error", {}).get("Code", ""))
        if code in _NOT_FOUND:
            raise ObjectNotFound(key) from None
        if code in _EXISTS:
            raise AlreadyExists(key) from None
        if code == "NoSuchBucket":
            raise StorageError(f"bucket: {store.bucket!r} does not exist") from None
        raise StorageError(f"{store.uri(key) if key else store.bucket}: {e}") from None
    except BotoCoreError as e:
        raise StorageError(f"{store.uri(key) if key else store.bucket}: {e}") from None

def _to_s3_metadata(meta: ObjectMeta) -> dict[str, str]:
    return {"sha256": meta.sha256, "width": str(meta.width), "height": str(meta.height)}


def _from_s3_metadata(key: str, resp: dict) -> ObjectMeta:
    md = resp.get("Metadata") or {}
    if "sha256" not in md:
        raise StorageError(f"{key}: object has no sha256 metadata (not written by ResultStore)")
    try:
        return ObjectMeta(sha256=md["sha256"], size=int(resp["ContentLength"]),
                          content_type=resp.get("ContentType", "application/octet-stream"),
                          width=int(md.get("width", 0)), height=int(md.get("height", 0)))
    except (KeyError, ValueError) as e:
        raise StorageError(f"{key}: malformed object metadata: {e}") from None
