"""The publish request's body: metadata, then the artifact streamed from disk."""

import secrets
from collections.abc import Iterator
from pathlib import Path

CHUNK = 1024 * 1024


class MultipartBody:
    """``multipart/form-data`` with the metadata part, then the file streamed from disk.

    It has a length, so requests sends a Content-Length and streams the iterator: the
    artifact is never held in memory (requests-toolbelt's encoder did the same, but
    recomputed the body's length on every read).
    """

    def __init__(self, metadata: bytes, path: Path) -> None:
        boundary = secrets.token_hex(16)
        self.content_type = f"multipart/form-data; boundary={boundary}"
        self.path = path
        self.head = (
            (
                f"--{boundary}\r\n"
                'Content-Disposition: form-data; name="metadata"; filename="metadata.json"\r\n'
                "Content-Type: application/json\r\n\r\n"
            ).encode()
            + metadata
            + (
                f"\r\n--{boundary}\r\n"
                'Content-Disposition: form-data; name="file"; filename="artifact"\r\n'
                "Content-Type: application/octet-stream\r\n\r\n"
            ).encode()
        )
        self.tail = f"\r\n--{boundary}--\r\n".encode()
        self.size = len(self.head) + path.stat().st_size + len(self.tail)

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[bytes]:
        yield self.head
        with self.path.open("rb") as f:
            while chunk := f.read(CHUNK):
                yield chunk
        yield self.tail
