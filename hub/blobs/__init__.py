"""Bundle archives by digest: one interface (:mod:`hub.blobs.base`), a filesystem store (the
default) and an S3-compatible one (:mod:`hub.blobs.s3`, for replicas on several hosts)."""

from pathlib import Path
from urllib.parse import unquote, urlsplit

from hub.blobs.base import ArchiveReader, BlobStore, BlobUnavailable
from hub.blobs.files import FileBlobStore
from models.errors import NexusError

__all__ = ["ArchiveReader", "BlobStore", "BlobUnavailable", "FileBlobStore", "open_blob_store"]


def open_blob_store(url: str) -> BlobStore:
    """``file:///PATH`` (or a plain path) or ``s3://BUCKET/PREFIX?endpoint_url=URL&region=R``."""
    if url.startswith("s3://"):
        # boto3 is heavy to import (botocore and its service models): only a hub that asks for S3 pays it
        try:
            from hub.blobs.s3 import S3BlobStore
        except ModuleNotFoundError as exc:
            raise NexusError(f"an s3:// blob store needs boto3 ({exc}): pip install 'nexus-edge[s3]'") from None
        return S3BlobStore.from_url(url)
    if url.startswith("file://"):
        parts = urlsplit(url)
        if parts.netloc not in ("", "localhost"):
            raise NexusError(f"blob store URL {url!r}: a file URL names a local path, file:///PATH")
        return FileBlobStore(Path(unquote(parts.path)))
    if "://" in url:
        raise NexusError(f"unknown blob store URL {url!r}; expected file:///PATH or s3://BUCKET/PREFIX")
    return FileBlobStore(Path(url).absolute())
