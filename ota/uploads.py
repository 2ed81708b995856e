"""Streaming upload handler: artifact bytes go to a temporary file and are hashed on the
way in, so a publish reads them once and never holds them in memory."""

import hashlib
from typing import Any

from django.conf import settings
from django.core.files.uploadedfile import TemporaryUploadedFile, UploadedFile
from django.core.files.uploadhandler import StopUpload, TemporaryFileUploadHandler


class HashedUploadedFile(TemporaryUploadedFile):
    sha256: str


class HashingUploadHandler(TemporaryFileUploadHandler):
    """Every uploaded file lands on disk with its sha256; oversize uploads are cut off."""

    # Django's default 64 KiB reads cost gunicorn a copy of its read-ahead buffer each;
    # 1 MiB reads make far fewer copies.
    chunk_size = 1024 * 1024

    def new_file(self, *args: Any, **kwargs: Any) -> None:
        super().new_file(*args, **kwargs)
        self._hash = hashlib.sha256()
        self._size = 0

    def receive_data_chunk(self, raw_data: bytes, start: int) -> bytes | None:
        self._size += len(raw_data)
        if self._size > settings.FLEET_MAX_ARTIFACT_BYTES:
            self.request.META["fleet.upload_too_large"] = True  # type: ignore[union-attr]
            raise StopUpload(connection_reset=False)
        self._hash.update(raw_data)
        return super().receive_data_chunk(raw_data, start)

    def file_complete(self, file_size: int) -> UploadedFile | None:
        uploaded = super().file_complete(file_size)
        if uploaded is not None:
            uploaded.sha256 = self._hash.hexdigest()  # type: ignore[attr-defined]
        return uploaded
