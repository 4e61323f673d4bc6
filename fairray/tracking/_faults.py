"""Failures of the remote stores a sweep writes to, turned into one line that names the store and its endpoint.

When the object store under ``storage.path`` (S3, GCS, ...) stops answering mid-sweep, Ray Tune cannot save the
sweep's state or the trials' checkpoints: trials fail (their MLflow runs end FAILED with the storage error) and the
sweep ends with an ``OSError`` from pyarrow several frames deep. :func:`storage_failure` recognises that error and
says what failed, where, and what to do; nothing in the store is presented as complete by it — the runs that did
not finish are closed FAILED by the caller, and Ray only records a checkpoint once its upload has completed.
"""

from __future__ import annotations

import os
from urllib.parse import parse_qs, urlparse

from fairray.errors import FairrayError

#: The environment variables an S3 client reads for a custom endpoint (S3-specific first), as pyarrow and boto3 do.
S3_ENDPOINT_VARS = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")


class StorageUnreachable(FairrayError):
    """The object store of ``storage.path`` failed mid-sweep (exit 1: retry with ``--resume`` once it is back)."""


def storage_endpoint(path: str) -> str:
    """Where the store of ``path`` is reached: the URI's ``endpoint_override``, else the environment's S3 endpoint,
    else the provider's default endpoint."""
    parsed = urlparse(path)
    override = parse_qs(parsed.query).get("endpoint_override")
    if override:
        return override[0]
    if parsed.scheme in ("s3", "s3a"):
        for var in S3_ENDPOINT_VARS:
            if os.environ.get(var):
                return f"{os.environ[var]} ({var})"
        return f"AWS S3's default endpoint for region {os.environ.get('AWS_DEFAULT_REGION', '(unset)')}"
    if parsed.scheme in ("gs", "gcs"):
        return os.environ.get("STORAGE_EMULATOR_HOST") or "Google Cloud Storage's default endpoint"
    return f"the {parsed.scheme}:// endpoint"


def _storage_oserror(exc: BaseException) -> OSError | None:
    """The ``OSError`` of a filesystem call in ``exc``'s chain (pyarrow raises them; Ray re-raises or wraps them)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and not isinstance(exc, (FileNotFoundError, PermissionError)):
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def storage_failure(exc: BaseException, storage_path: str) -> StorageUnreachable | None:
    """One-line error for a sweep whose remote ``storage_path`` failed under it, or None when ``exc`` is not that
    (a local path, or an error that is not the filesystem's)."""
    if "://" not in storage_path or storage_path.startswith("file://"):
        return None
    err = _storage_oserror(exc)
    if err is None:
        return None
    detail = " ".join(str(err).split())[:300]
    return StorageUnreachable(
        f"storage.path {storage_path}: the object store at {storage_endpoint(storage_path)} failed mid-sweep "
        f"({detail}); the sweep stopped and its unfinished trials' MLflow runs are closed FAILED; once the store "
        "answers again, continue with `fairray sweep SPEC --resume`")
