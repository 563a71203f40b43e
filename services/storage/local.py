"""ResultStore on a local filesystem (single machine, tests, a shared volume).

``root/<key>`` holds the object's bytes exactly, so other processes on the machine read the
file directly (refs carry a "file://" URI and no presigned URL). Metadata lives in a sidecar,
``root/.meta/<key>.json``; keys cannot start a segment with ".", so neither the sidecar tree nor
the temporary files can collide with a key.

Each file is written to a temporary name in its folder and moved into place with os.replace
(atomic on POSIX). The sidecar is moved last, and an object exists only once its sidecar does:
a writer that dies halfway leaves no visible object, and a retry replaces the leftovers.
A create-only write links its bytes into place with os.link, which fails if the name exists
(O_EXCL semantics, also on NFS): of two creators one wins; bytes left by a creator that died
before its sidecar keep the key taken until ``delete_prefix`` clears it.
"""
from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path

from services.storage.base import ResultStore
from services.storage.records import AlreadyExists, ObjectMeta, ObjectNotFound, StorageError

_META_DIR = ".meta"


class LocalResultStore(ResultStore):
    """Files under ``root`` (created if missing)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).expanduser().resolve()
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StorageError(f"root: cannot create {self.root}: {e}") from None
        self._uri_root = self.root.as_uri().rstrip("/") + "/"

    def __repr__(self) -> str:
        return f"LocalResultStore(root={str(self.root)!r})"

    def uri(self, key: str) -> str:
        return self._uri_root + key

    def key_for_uri(self, uri: str) -> str:
        if not isinstance(uri, str) or not uri.startswith(self._uri_root):
            raise ValueError(f"uri: {uri!r} is not in this store ({self._uri_root})")
        return uri[len(self._uri_root):]

    def path_for(self, key: str) -> Path:
        """The file holding the object's bytes."""
        return self.root / key

    def _meta_path(self, key: str) -> Path:
        return self.root / _META_DIR / f"{key}.json"

    def _write(self, key: str, data: bytes, meta: ObjectMeta) -> None:
        try:
            _atomic_write(self.path_for(key), data)
            _atomic_write(self._meta_path(key), _sidecar(meta))
        except OSError as e:
            raise StorageError(f"{key}: write failed: {e}") from None

    def _write_new(self, key: str, data: bytes, meta: ObjectMeta) -> None:
        try:
            _atomic_write(self.path_for(key), data, exclusive=True)
        except FileExistsError:
            raise AlreadyExists(key) from None
        except OSError as e:
            raise StorageError(f"{key}: write failed: {e}") from None
        try:
            _atomic_write(self._meta_path(key), _sidecar(meta))
        except OSError as e:
            _unlink(self.path_for(key))  # free the key again: nothing visible was made
            raise StorageError(f"{key}: write failed: {e}") from None

    def _read(self, key: str) -> tuple[bytes, ObjectMeta]:
        meta = self._stat(key)
        try:
            return self.path_for(key).read_bytes(), meta
        except FileNotFoundError:
            raise ObjectNotFound(key) from None
        except OSError as e:
            raise StorageError(f"{key}: read failed: {e}") from None

    def _stat(self, key: str) -> ObjectMeta:
        try:
            d = json.loads(self._meta_path(key).read_bytes())
            return ObjectMeta(sha256=d["sha256"], size=int(d["size"]),
                              content_type=d["content_type"], width=int(d["width"]),
                              height=int(d["height"]))
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise ObjectNotFound(key) from None
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise StorageError(f"{key}: unreadable metadata: {e}") from None

    def _presign(self, key: str, expires_s: int) -> str:
        return ""  # local files are read directly through their path

    def _delete_prefix(self, prefix: str) -> int:
        # Sidecars go first, so each object stops existing before its bytes are removed.
        count = 0
        if self._meta_path(prefix).is_file():  # the object named `prefix` itself
            _unlink(self._meta_path(prefix))
            _unlink(self.path_for(prefix))
            count += 1
        meta_dir, data_dir = self.root / _META_DIR / prefix, self.path_for(prefix)
        try:
            if meta_dir.is_dir():
                count += sum(1 for p in meta_dir.rglob("*.json") if p.is_file())
                shutil.rmtree(meta_dir)
            if data_dir.is_dir():  # also takes leftovers of writers that died halfway
                shutil.rmtree(data_dir)
        except OSError as e:
            raise StorageError(f"{prefix}: delete failed: {e}") from None
        return count

def _sidecar(meta: ObjectMeta) -> bytes:
    return json.dumps({"sha256": meta.sha256, "size": meta.size,
                       "content_type": meta.content_type, "width": meta.width,
                       "height": meta.height}).encode()


def _atomic_write(path: Path, data: bytes, exclusive: bool = False) -> None:
    """Write a temporary file, then move it into place; ``exclusive``: link it instead, which
    raises FileExistsError if ``path`` exists."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if exclusive:
            os.link(tmp, path)
        else:
            os.replace(tmp, path)
    finally:
        _unlink(tmp)


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass
