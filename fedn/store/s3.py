"""Models on MinIO or any S3 service (minio client), streamed in and out in parts."""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Iterable, Iterator
from urllib.parse import parse_qs, unquote, urlsplit

import urllib3
from minio import Minio
from minio.error import MinioException, S3Error

from fedn.errors import InvalidArgument, NotFound, StoreError
from fedn.store.base import ModelStore, StoredObject
from fedn.store.redact import redact_url
from fedn.store.validation import check_key

__all__ = ["S3ModelStore"]

logger = logging.getLogger(__name__)

_PART_BYTES = 16 << 20  # multipart part size for streamed uploads (S3 needs >= 5 MiB)
_MISSING = {"NoSuchKey", "NoSuchObject", "NoSuchBucket"}


class _ChunkReader(io.RawIOBase):
    """A file-like view of an iterator of byte chunks, so minio streams it in parts."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks = iter(chunks)
        self._pending = memoryview(b"")  # a view, so taking parts of a large chunk copies only the parts
        self.size = 0

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        out = bytearray()
        while n < 0 or len(out) < n:
            if not self._pending:
                try:
                    self._pending = memoryview(next(self._chunks)).cast("B")
                except StopIteration:
                    break
            take = len(self._pending) if n < 0 else n - len(out)
            out += self._pending[:take]
            self._pending = self._pending[take:]
        self.size += len(out)
        return bytes(out)


class S3ModelStore(ModelStore):
    """``s3://ACCESS:SECRET@host:port/bucket`` (or ``minio://``); ``?secure=true`` for TLS.

    Credentials may instead come from ``FEDN_S3_ACCESS_KEY`` / ``FEDN_S3_SECRET_KEY``. The bucket is
    created at start if it is missing. A model is never held twice in memory: uploads of chunk
    iterables go up in 16 MiB parts, downloads stream.
    """

    def __init__(self, url: str, *, timeout_s: float = 5.0) -> None:
        parts = urlsplit(url)
        self.bucket = parts.path.strip("/")
        if not parts.hostname or not self.bucket or "/" in self.bucket:
            raise InvalidArgument(f"S3 URL needs a host and a bucket: {parts.scheme}://host:port/bucket")
        secure = parse_qs(parts.query).get("secure", ["false"])[0].lower() in ("1", "true", "yes")
        access = unquote(parts.username or "") or os.environ.get("FEDN_S3_ACCESS_KEY", "")
        secret = unquote(parts.password or "") or os.environ.get("FEDN_S3_SECRET_KEY", "")
        try:
            port = parts.port
        except ValueError:  # e.g. an unescaped "/" in the secret; the "port" urllib saw is part of it
            raise InvalidArgument(
                f"invalid S3 URL {redact_url(url)}: percent-encode an access key or secret holding : / ? # @ %"
            ) from None
        self._endpoint = f"{parts.hostname}:{port}" if port else parts.hostname
        where = f"{'https' if secure else 'http'}://{self._endpoint}/{self.bucket}"
        http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=timeout_s, read=120.0),
            retries=urllib3.Retry(total=2, backoff_factor=0.2, status_forcelist=(500, 502, 503, 504)),
        )
        self._client = Minio(self._endpoint, access_key=access, secret_key=secret, secure=secure, http_client=http)
        try:
            self._ensure_bucket()
        except S3Error as exc:
            raise StoreError(f"cannot use S3 bucket {where}: {exc.code}: {exc.message}") from exc
        except (MinioException, urllib3.exceptions.HTTPError, OSError, ValueError) as exc:
            raise StoreError(f"cannot reach S3 at {where}: {str(exc).splitlines()[0][:200]}") from exc
        logger.info("model store: S3 %s", where)

    def _ensure_bucket(self) -> None:
        """Create the bucket unless it exists. The reducer and the combiners start together and each may
        try: a bucket another of them created in the meantime is this federation's, not an error."""
        if self._client.bucket_exists(self.bucket):
            return
        try:
            self._client.make_bucket(self.bucket)
        except S3Error as exc:
            if exc.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise
            if not self._client.bucket_exists(self.bucket):  # someone else's bucket of that name
                raise
            logger.info("bucket %s at %s was created by another process meanwhile", self.bucket, self._endpoint)
            return
        logger.info("created bucket %s at %s", self.bucket, self._endpoint)

    def _fail(self, action: str, key: str, exc: Exception) -> StoreError:
        detail = f"{exc.code}: {exc.message}" if isinstance(exc, S3Error) else str(exc).splitlines()[0][:200]
        return StoreError(f"S3 {action} of {key!r} in {self.bucket} failed: {detail}")

    def put(self, key: str, data: bytes | Iterable[bytes]) -> int:
        check_key(key)
        try:
            if isinstance(data, bytes | bytearray | memoryview):
                self._client.put_object(self.bucket, key, io.BytesIO(data), len(data))
                return len(data)
            reader = _ChunkReader(data)
            self._client.put_object(self.bucket, key, reader, length=-1, part_size=_PART_BYTES)
            return reader.size
        except (MinioException, urllib3.exceptions.HTTPError, OSError) as exc:
            raise self._fail("write", key, exc) from exc

    def _open(self, key: str):
        try:
            return self._client.get_object(self.bucket, check_key(key))
        except S3Error as exc:
            if exc.code in _MISSING:
                raise NotFound(f"model blob {key!r} not found") from None
            raise self._fail("read", key, exc) from exc
        except (MinioException, urllib3.exceptions.HTTPError, OSError) as exc:
            raise self._fail("read", key, exc) from exc

    def get(self, key: str) -> bytes:
        response = self._open(key)
        try:
            return response.read()
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise self._fail("read", key, exc) from exc
        finally:
            response.close()
            response.release_conn()

    def iter_chunks(self, key: str, chunk_bytes: int) -> Iterator[bytes]:
        response = self._open(key)
        try:
            yield from response.stream(chunk_bytes)
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise self._fail("read", key, exc) from exc
        finally:
            response.close()
            response.release_conn()

    def exists(self, key: str) -> bool:
        try:
            self._client.stat_object(self.bucket, check_key(key))
            return True
        except S3Error as exc:
            if exc.code in _MISSING:
                return False
            raise self._fail("stat", key, exc) from exc
        except (MinioException, urllib3.exceptions.HTTPError, OSError) as exc:
            raise self._fail("stat", key, exc) from exc

    def delete(self, key: str) -> None:
        if not self.exists(key):
            raise NotFound(f"model blob {key!r} not found")
        try:
            self._client.remove_object(self.bucket, key)
        except (MinioException, urllib3.exceptions.HTTPError, OSError) as exc:
            raise self._fail("delete", key, exc) from exc

    def list_keys(self, prefix: str = "") -> Iterator[StoredObject]:
        # S3 lists keys in UTF-8 byte order, which is Python's str order: no sort needed.
        try:
            for obj in self._client.list_objects(self.bucket, prefix=prefix or None, recursive=True):
                if obj.is_dir or obj.object_name is None:
                    continue
                modified = obj.last_modified.timestamp() if obj.last_modified else 0.0
                yield StoredObject(obj.object_name, obj.size or 0, modified)
        except (MinioException, urllib3.exceptions.HTTPError, OSError) as exc:
            raise self._fail("listing", prefix, exc) from exc
