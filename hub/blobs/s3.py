"""Blobs in an S3-compatible object store (AWS S3, MinIO, Ceph, ...): what replicas on several
hosts share, ``s3://BUCKET/PREFIX?endpoint_url=URL&region=REGION``.

Objects are ``PREFIX/sha256/<digest>``, written with one PUT (S3 makes an object visible whole
or not at all) and read with ranged GETs. Credentials come from boto3's usual chain (the
``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` environment, a profile, an instance role),
never from the URL, so they stay out of process lists and logs. The client is boto3's, which is
thread-safe; each request runs in the caller's thread (a worker thread of the hub's).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import boto3
import botocore.config
import botocore.exceptions

from hub.blobs.base import ArchiveReader, BlobStore, BlobUnavailable, checked_digest
from models.errors import NexusError

#: parallel requests one hub process may have open to the object store (downloads stream from it)
MAX_CONNECTIONS = 64
_MISSING = ("404", "NoSuchKey", "NotFound")


class _ObjectReader(ArchiveReader):
    def __init__(self, store: S3BlobStore, key: str, size: int) -> None:
        self.store, self.key, self.size = store, key, size

    def _get(self, offset: int, length: int) -> Any:
        last = min(offset + length, self.size) - 1
        return self.store.call("get_object", Key=self.key, Range=f"bytes={offset}-{last}")["Body"]

    def read(self, offset: int, length: int) -> bytes:
        if length <= 0 or offset >= self.size:
            return b""
        body = self._get(offset, length)
        try:
            return bytes(body.read())
        finally:
            body.close()

    def chunks(self, offset: int, length: int, chunk: int) -> Iterator[bytes]:
        # one GET for the whole span, read a chunk at a time as the response is sent on
        if length <= 0 or offset >= self.size:
            return
        body = self._get(offset, length)
        try:
            while data := body.read(chunk):
                yield data
        except botocore.exceptions.BotoCoreError as exc:
            raise BlobUnavailable(f"object store {self.store.where}: {exc}") from None
        finally:
            body.close()


class S3BlobStore(BlobStore):
    def __init__(self, bucket: str, prefix: str = "", endpoint_url: str | None = None, region: str | None = None):
        self.bucket, self.prefix = bucket, prefix.strip("/")
        self.where = f"s3://{bucket}/{self.prefix}" + (f" at {endpoint_url}" if endpoint_url else "")
        config = botocore.config.Config(
            max_pool_connections=MAX_CONNECTIONS,
            retries={"max_attempts": 3, "mode": "standard"},
            connect_timeout=2,
            read_timeout=10,
        )
        self.client = boto3.client("s3", endpoint_url=endpoint_url, region_name=region, config=config)

    @classmethod
    def from_url(cls, url: str) -> S3BlobStore:
        parts = urlsplit(url)
        if not parts.netloc:
            raise NexusError(f"blob store URL {url!r} names no bucket: s3://BUCKET/PREFIX?endpoint_url=URL")
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        unknown = set(query) - {"endpoint_url", "region"}
        if unknown:
            raise NexusError(f"blob store URL {url!r}: unknown option {sorted(unknown)[0]!r} (endpoint_url, region)")
        return cls(parts.netloc, parts.path, query.get("endpoint_url"), query.get("region"))

    def _key(self, digest: str) -> str:
        return "/".join(p for p in (self.prefix, "sha256", checked_digest(digest)) if p)

    def call(self, operation: str, **params: Any) -> Any:
        try:
            return getattr(self.client, operation)(Bucket=self.bucket, **params)
        except botocore.exceptions.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in _MISSING:
                raise FileNotFoundError(params.get("Key")) from None
            raise BlobUnavailable(f"object store {self.where}: {exc}") from None
        except botocore.exceptions.BotoCoreError as exc:
            raise BlobUnavailable(f"object store {self.where}: {exc}") from None

    def put(self, digest: str, data: bytes) -> None:
        key = self._key(checked_digest(digest, data))
        if self.size(digest) == len(data):
            return
        self.call("put_object", Key=key, Body=data, ContentType="application/x-tar")

    def size(self, digest: str) -> int | None:
        try:
            return int(self.call("head_object", Key=self._key(digest))["ContentLength"])
        except FileNotFoundError:
            return None

    def open(self, digest: str) -> ArchiveReader | None:
        size = self.size(digest)
        return None if size is None else _ObjectReader(self, self._key(digest), size)

    def close(self) -> None:
        self.client.close()
