"""Behaviour every ResultStore backend must have. A test module subclasses StoreContract and
provides a ``store`` fixture (a fresh, empty store per test)."""
from __future__ import annotations

import asyncio
import hashlib
import json
import threading

import pytest

from services.storage import AlreadyExists, ObjectNotFound, ResultRef, StorageError

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4  # not a real image: bytes are bytes here


def store_request(store, request_id="req-1", tenant="default", n_images=2):
    """Store a request's images and Story the way the gateway does; return (layout, refs)."""
    layout = store.request_layout(request_id, tenant)
    images = [store.put(layout.image(i), PNG + bytes([i]), "image/png", width=64 + i, height=32)
              for i in range(n_images)]
    story = store.put(layout.story, b"story-bytes", "application/x-protobuf")
    return layout, {"images": images, "story": story}


class StoreContract:
    def test_put_get_exists_ref_for_roundtrip(self, store):
        ref = store.put("t/r/images/00.png", PNG, "image/png", width=64, height=32)
        assert isinstance(ref, ResultRef)
        assert ref.sha256 == hashlib.sha256(PNG).hexdigest()
        assert (ref.bytes, ref.width, ref.height, ref.content_type) == (len(PNG), 64, 32,
                                                                       "image/png")
        assert ref.uri == store.uri("t/r/images/00.png")
        assert store.key_for_uri(ref.uri) == "t/r/images/00.png"
        assert store.get("t/r/images/00.png") == PNG
        assert store.exists("t/r/images/00.png")
        again = store.ref_for("t/r/images/00.png")
        assert (again.uri, again.sha256, again.bytes, again.width, again.height,
                again.content_type) == (ref.uri, ref.sha256, ref.bytes, 64, 32, "image/png")

    def test_non_image_has_zero_size_and_empty_object_is_fine(self, store):
        ref = store.put("t/r/empty.bin", b"", "application/octet-stream")
        assert (ref.width, ref.height, ref.bytes) == (0, 0, 0)
        assert ref.sha256 == hashlib.sha256(b"").hexdigest()
        assert store.get("t/r/empty.bin") == b""

    def test_missing_object(self, store):
        assert not store.exists("t/r/nothing.png")
        with pytest.raises(ObjectNotFound):
            store.get("t/r/nothing.png")
        with pytest.raises(ObjectNotFound):
            store.ref_for("t/r/nothing.png")
        assert issubclass(ObjectNotFound, StorageError)

    def test_put_again_overwrites(self, store):
        first = store.put("t/r/story.pb", b"one", "application/x-protobuf")
        same = store.put("t/r/story.pb", b"one", "application/x-protobuf")
        # Deterministic key + same bytes: the same ref. A presigned URL carries its signing
        # time (to the second), so two puts may differ there and nowhere else.
        assert same.to_dict(with_url=False) == first.to_dict(with_url=False)
        second = store.put("t/r/story.pb", b"two!", "application/x-protobuf", width=0)
        assert store.get("t/r/story.pb") == b"two!"
        assert store.ref_for("t/r/story.pb").sha256 == second.sha256 != first.sha256
        assert store.ref_for("t/r/story.pb").bytes == 4

    @pytest.mark.parametrize("key", ["", "/abs/x.png", "../x", "a/../b", "a/./b", "a//b", "a/",
                                     "a/.hidden", ".meta/x.json", "a b", "a\\b", "é.png",
                                     "a/b?c", "x" * 1025, None, 5])
    def test_bad_keys_rejected_naming_the_field(self, store, key):
        for call in (lambda: store.put(key, b"x", "text/plain"), lambda: store.get(key),
                     lambda: store.exists(key), lambda: store.ref_for(key),
                     lambda: store.url_for(key)):
            with pytest.raises(ValueError, match=r"^key: "):
                call()
        with pytest.raises(ValueError, match=r"^prefix: "):
            store.delete_prefix(key)

    @pytest.mark.parametrize("field,kwargs", [
        ("tenant", {"tenant": "../other"}), ("tenant", {"tenant": ""}),
        ("tenant", {"tenant": "a/b"}), ("tenant", {"tenant": ".hidden"}),
        ("tenant", {"tenant": "x" * 129}), ("request_id", {"request_id": "a/b"}),
        ("request_id", {"request_id": ".."}), ("request_id", {"request_id": "id with space"})])
    def test_bad_tenant_or_request_id_rejected_naming_the_field(self, store, field, kwargs):
        args = {"request_id": "req-1", "tenant": "acme", **kwargs}
        with pytest.raises(ValueError, match=rf"^{field}: "):
            store.request_layout(**args)
        with pytest.raises(ValueError, match=rf"^{field}: "):
            store.write_manifest(args["request_id"], {}, tenant=args["tenant"])

    @pytest.mark.parametrize("field,kwargs", [
        ("content_type", {"content_type": ""}), ("content_type", {"content_type": "a\nb"}),
        ("width", {"width": -1}), ("height", {"height": 1.5}), ("width", {"width": True})])
    def test_bad_put_arguments_rejected_naming_the_field(self, store, field, kwargs):
        args = {"content_type": "image/png", **kwargs}
        with pytest.raises(ValueError, match=rf"^{field}: "):
            store.put("t/r/x.png", b"x", **args)
        assert not store.exists("t/r/x.png")

    def test_bad_expiry_and_data_rejected(self, store):
        for bad in (0, -5, 7 * 24 * 3600 + 1, 2.5):
            with pytest.raises(ValueError, match=r"^expires_s: "):
                store.url_for("t/r/x.png", bad)
        with pytest.raises(TypeError, match=r"^data: "):
            store.put("t/r/x.png", "text, not bytes", "text/plain")

    def test_request_layout_keys(self, store):
        layout = store.request_layout("req-1", tenant="acme")
        assert layout.image(0) == "acme/req-1/images/00.png"
        assert layout.image(7) == "acme/req-1/images/07.png"
        assert layout.story == "acme/req-1/story.pb"
        assert layout.manifest == "acme/req-1/manifest.json"
        assert store.request_layout("req-1").root == "default/req-1"
        with pytest.raises(ValueError, match=r"^index: "):
            layout.image(-1)

    def test_tenants_do_not_share_objects(self, store):
        _, a = store_request(store, "req-1", tenant="acme")
        _, b = store_request(store, "req-1", tenant="globex")
        assert a["story"].uri != b["story"].uri
        store.delete_prefix("acme")
        assert not store.exists("acme/req-1/story.pb")
        assert store.exists("globex/req-1/story.pb")

    def test_manifest_written_last_records_the_refs(self, store):
        layout, refs = store_request(store, "req-1", tenant="acme")
        mref = store.write_manifest("req-1", {"prompt": "a cat", **refs}, tenant="acme")
        assert mref.uri == store.uri(layout.manifest)
        assert mref.content_type == "application/json"
        manifest = json.loads(store.get(layout.manifest))
        assert manifest == store.read_manifest("req-1", tenant="acme")
        assert (manifest["manifest_version"], manifest["tenant"], manifest["request_id"],
                manifest["prompt"]) == (1, "acme", "req-1", "a cat")
        images = [ResultRef.from_dict(d) for d in manifest["images"]]
        assert [(r.uri, r.sha256, r.width, r.height) for r in images] == \
               [(r.uri, r.sha256, r.width, r.height) for r in refs["images"]]
        assert "presigned_url" not in manifest["story"]  # it would expire; url_for makes one
        assert manifest["story"]["key"] == layout.story  # relative to the store: portable
        assert [d["key"] for d in manifest["images"]] == [layout.image(0), layout.image(1)]
        assert store.get(store.key_for_uri(images[1].uri)) == PNG + bytes([1])

    def test_manifest_before_its_objects_is_refused(self, store):
        layout, refs = store_request(store, "req-1")
        store.delete_prefix(layout.image(1))  # as if image 1 were not written yet
        with pytest.raises(StorageError, match="write the manifest last"):
            store.write_manifest("req-1", refs)
        assert not store.exists(layout.manifest)

    def test_manifest_with_a_stale_ref_is_refused(self, store):
        layout, refs = store_request(store, "req-1")
        store.put(layout.story, b"rewritten", "application/x-protobuf")
        with pytest.raises(StorageError, match="overwritten since its ref was made"):
            store.write_manifest("req-1", refs)

    def test_manifest_arguments_checked(self, store):
        foreign = ResultRef(uri="s3://elsewhere/x.png", presigned_url="", sha256="0" * 64,
                            bytes=1)
        with pytest.raises(ValueError, match=r"^manifest: "):
            store.write_manifest("req-1", {"images": [foreign]})
        with pytest.raises(ValueError, match=r"^manifest: 'tenant'"):
            store.write_manifest("req-1", {"tenant": "other"})
        with pytest.raises(ValueError, match=r"^manifest: not JSON"):
            store.write_manifest("req-1", {"x": object()})
        with pytest.raises(TypeError, match=r"^manifest: "):
            store.write_manifest("req-1", ["not", "a", "dict"])

    def test_manifest_is_deterministic(self, store):
        _, refs = store_request(store, "req-1")
        first = store.write_manifest("req-1", refs)
        assert store.write_manifest("req-1", refs).sha256 == first.sha256  # a retry rewrites it

    def test_delete_prefix_is_a_folder_delete(self, store):
        store_request(store, "req-1", n_images=2)
        store_request(store, "req-10", n_images=1)
        store.put("default/req-1x", b"x", "text/plain")
        assert store.delete_prefix("default/req-1") == 3
        assert not store.exists("default/req-1/images/00.png")
        assert not store.exists("default/req-1/story.pb")
        assert store.exists("default/req-10/story.pb") and store.exists("default/req-1x")
        assert store.delete_prefix("default/req-1x") == 1  # an object's own key
        assert not store.exists("default/req-1x")
        assert store.delete_prefix("default/req-404") == 0

    # ---- create-only writes: a request_id is claimed once ----------------------------------

    def test_create_only_refuses_an_existing_object_and_keeps_it(self, store):
        layout = store.request_layout("req-1", tenant="acme")
        first = store.put(layout.claim, b"claim-1", "application/json", create=True)
        with pytest.raises(AlreadyExists):
            store.put(layout.claim, b"claim-2", "application/json", create=True)
        assert store.get(layout.claim) == b"claim-1"
        assert store.ref_for(layout.claim).sha256 == first.sha256
        assert issubclass(AlreadyExists, StorageError)

    def test_create_only_of_the_same_bytes_is_a_retry(self, store):
        """A create whose answer was lost is retried with the same bytes: that succeeds."""
        a = store.put("t/r/claim.json", b"same", "application/json", create=True)
        b = store.put("t/r/claim.json", b"same", "application/json", create=True)
        assert a.sha256 == b.sha256

    def test_create_only_over_a_plain_object_and_after_delete(self, store):
        store.put("t/r/manifest.json", b"old", "application/json")
        with pytest.raises(AlreadyExists):
            store.put("t/r/manifest.json", b"new", "application/json", create=True)
        store.delete_prefix("t/r")  # deleting the request frees its keys
        store.put("t/r/manifest.json", b"new", "application/json", create=True)
        assert store.get("t/r/manifest.json") == b"new"

    def test_concurrent_creators_one_wins(self, store):
        results, start = [], threading.Barrier(8)

        def create(i):
            start.wait()
            try:
                store.put("t/race/claim.json", f"claim-{i}".encode(), "application/json",
                          create=True)
                results.append(i)
            except AlreadyExists:
                results.append("exists")

        threads = [threading.Thread(target=create, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        winners = [r for r in results if r != "exists"]
        assert len(results) == 8 and len(winners) == 1
        assert store.get("t/race/claim.json") == f"claim-{winners[0]}".encode()

    def test_manifest_create_only(self, store):
        _, refs = store_request(store, "req-1")
        store.write_manifest("req-1", {"state": "complete", **refs}, create=True)
        with pytest.raises(AlreadyExists):
            store.write_manifest("req-1", {"state": "cancelled", **refs}, create=True)
        assert store.read_manifest("req-1")["state"] == "complete"

    def test_async_twins(self, store):
        async def main():
            ref = await store.aput("t/r/a.bin", b"abc", "text/plain", create=True)
            assert await store.aexists("t/r/a.bin") and await store.aget("t/r/a.bin") == b"abc"
            with pytest.raises(AlreadyExists):
                await store.aput("t/r/a.bin", b"abd", "text/plain", create=True)
            layout, refs = store_request(store, "req-a")
            m = await store.awrite_manifest("req-a", refs, create=True)
            assert m.uri == store.uri(layout.manifest)
            assert await store.adelete_prefix("t/r") == 1
            return ref

        assert asyncio.run(main()).bytes == 3
