"""Fetch a stored result (``ResultRef``) to a local file, checking its SHA-256 and size."""
from __future__ import annotations

import hashlib
import http.client
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import BinaryIO
from urllib.parse import urlsplit

from .errors import (
    DeadlineExceeded,
    Emu35Error,
    IntegrityError,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
)
from .types import ResultRef

_CHUNK = 1 << 20


def download(ref: ResultRef, dest_path: str | os.PathLike, timeout: float = 60.0) -> Path:
    """Write the object of ``ref`` to ``dest_path`` (parents created) and return the path.

    Reads ``ref.presigned_url`` (http/https) when set, else a ``file://`` ``ref.uri`` from the
    local filesystem. The bytes are checked against ``ref.sha256`` and ``ref.bytes`` (when set)
    before the file appears at ``dest_path``: a mismatch raises ``IntegrityError`` and leaves
    nothing behind. ``timeout``: seconds to connect and for each read. Failures raise
    ``Emu35Error`` subclasses (NotFound, PermissionDenied for an expired URL, Unavailable,
    DeadlineExceeded).
    """
    dest = Path(dest_path)
    with _open(ref, timeout) as src:
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
        except OSError as e:
            raise Emu35Error(f"{dest}: cannot write: {e.strerror or e}") from None
        try:
            with os.fdopen(fd, "wb") as out:
                digest, size = _copy(src, out, ref)
            _verify(ref, digest, size)
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0600 -> what open() would give
            os.replace(tmp, dest)
        except BaseException as e:
            Path(tmp).unlink(missing_ok=True)
            if isinstance(e, OSError):  # reads raise Emu35Error; this is a local write failing
                raise Emu35Error(f"{dest}: cannot write: {e.strerror or e}") from None
            raise
    return dest


def _umask() -> int:
    """The process umask (read from /proc where possible: setting it is process-wide)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _open(ref: ResultRef, timeout: float) -> BinaryIO:
    if ref.presigned_url:
        return _open_http(ref.presigned_url, timeout)
    parts = urlsplit(ref.uri)
    if parts.scheme != "file" or parts.netloc not in ("", "localhost"):
        raise InvalidArgument(f"ref: {ref.uri!r} has no presigned_url and is not a local "
                              "file:// uri")
    path = urllib.request.url2pathname(parts.path)
    try:
        return open(path, "rb")
    except FileNotFoundError:
        raise NotFound(f"{ref.uri}: no such file") from None
    except OSError as e:
        raise Emu35Error(f"{ref.uri}: {e.strerror or e}") from None


def _open_http(url: str, timeout: float) -> BinaryIO:
    if urlsplit(url).scheme not in ("http", "https"):
        raise InvalidArgument(f"ref.presigned_url: {url!r} is not an http(s) URL")
    where = url.split("?", 1)[0]  # the query of a presigned URL is a credential: keep it out
    try:
        return urllib.request.urlopen(url, timeout=timeout)
    except urllib.error.HTTPError as e:
        e.close()
        cls = {401: Unauthenticated, 403: PermissionDenied, 404: NotFound}.get(e.code)
        cls = cls or (Unavailable if e.code >= 500 else Emu35Error)
        raise cls(f"GET {where}: HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
        reason = getattr(e, "reason", e)
        if isinstance(reason, TimeoutError):
            raise DeadlineExceeded(f"GET {where}: no answer in {timeout} s") from None
        raise Unavailable(f"GET {where}: {reason}") from None


def _copy(src: BinaryIO, out: BinaryIO, ref: ResultRef) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    while True:
        try:
            chunk = src.read(_CHUNK)
        except TimeoutError:
            raise DeadlineExceeded(f"{ref.uri}: read timed out") from None
        except (OSError, http.client.HTTPException) as e:
            raise Unavailable(f"{ref.uri}: read failed: {e}") from None
        if not chunk:
            return digest.hexdigest(), size
        digest.update(chunk)
        size += len(chunk)
        out.write(chunk)


def _verify(ref: ResultRef, sha256: str, size: int) -> None:
    if ref.bytes and size != ref.bytes:
        raise IntegrityError(f"{ref.uri}: got {size} bytes, expected {ref.bytes}")
    if ref.sha256 and sha256 != ref.sha256.lower():
        raise IntegrityError(f"{ref.uri}: sha256 {sha256} does not match {ref.sha256}")
