"""Where bytes live: local paths and object-storage URLs (``s3://``...).

One module owns every storage setting: GDAL configuration for COGs on object
storage, fsspec/s3fs options, Zarr stores, and the environment that Ray
workers need to reach the same endpoint. S3-compatible stores (MinIO, Ceph)
are reached through ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``; credentials
come from the standard AWS chain and are never logged or written anywhere.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlparse

from geoseg.errors import StorageError

# GDAL settings tuned for reading Cloud-Optimized GeoTIFFs from object storage.
GDAL_OPTIONS: dict[str, Any] = {
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
    "CPL_VSIL_CURL_ALLOWED_EXTENSIONS": ".tif,.tiff,.TIF,.TIFF,.vrt,.jp2",
    "GDAL_HTTP_MAX_RETRY": "5",
    "GDAL_HTTP_RETRY_DELAY": "1",
    "GDAL_HTTP_MULTIPLEX": "YES",
    "GDAL_HTTP_MERGE_CONSECUTIVE_RANGES": "YES",
    "VSI_CACHE": "TRUE",
    "VSI_CACHE_SIZE": str(8 << 20),  # bytes per file: a small cache of fetched ranges
    "GDAL_INGESTED_BYTES_AT_OPEN": "32768",  # a COG's header in one request
    # MB per process. Reads do their own caching of decoded blocks (raster.TileReader),
    # so GDAL's block cache only serves writes: small, and memory stays flat.
    "GDAL_CACHEMAX": 16,
}

# Environment variables forwarded to Ray workers so they reach the same store.
FORWARDED_ENV = (
    "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
    "AWS_DEFAULT_REGION", "AWS_REGION", "AWS_PROFILE", "AWS_S3_ENDPOINT", "AWS_HTTPS", "AWS_VIRTUAL_HOSTING",
    "AWS_NO_SIGN_REQUEST",
)


def is_remote(url: str) -> bool:
    """True for URLs with a scheme other than ``file``."""
    scheme = urlparse(str(url)).scheme
    return len(scheme) > 1 and scheme != "file"


def local_path(url: str) -> str:
    """The filesystem path of a local URL (``file://`` stripped)."""
    url = str(url)
    return urlparse(url).path if url.startswith("file://") else url


def absolute(url: str) -> str:
    """A URL as it reads from any folder: a local path made absolute, a remote URL as it is."""
    return str(url) if is_remote(url) else os.path.abspath(local_path(url))


def join(base: str, *parts: str) -> str:
    """Join path parts onto a path or URL (a local path made absolute: what is derived from it, and
    stored in records, reads the same from any folder)."""
    base = str(base)
    if is_remote(base):
        return posixpath.join(base.rstrip("/") + "/", *parts)
    return os.path.join(absolute(base), *parts)


def stem(url: str) -> str:
    """File name without directories or extension: ``s3://b/x/scene.tif`` -> ``scene``."""
    name = posixpath.basename(str(url).rstrip("/"))
    return name.rsplit(".", 1)[0] if "." in name else name


def endpoint_url() -> str | None:
    """The S3 endpoint override, if any (``AWS_ENDPOINT_URL_S3`` wins)."""
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def gdal_options() -> dict[str, Any]:
    """GDAL config options, including the S3 endpoint derived from ``AWS_ENDPOINT_URL``."""
    opts = dict(GDAL_OPTIONS)
    ep = endpoint_url()
    if ep:
        parsed = urlparse(ep)
        opts["AWS_S3_ENDPOINT"] = parsed.netloc or parsed.path
        opts["AWS_HTTPS"] = "NO" if parsed.scheme == "http" else "YES"
        opts["AWS_VIRTUAL_HOSTING"] = "FALSE"
    return opts


def arrow_filesystem(url: str):
    """``(path, pyarrow filesystem or None)`` for Arrow-based writers (Ray Train's
    checkpoint storage): S3 URLs get an ``S3FileSystem`` on the same endpoint as
    GDAL and fsspec; local paths are made absolute; other URLs are left to Arrow."""
    url = str(url)
    if not is_remote(url):
        return absolute(url), None
    scheme, rest = url.split("://", 1)
    if scheme not in ("s3", "s3a"):
        return url, None
    import pyarrow.fs as pafs

    kwargs: dict[str, Any] = {}
    ep = endpoint_url()
    if ep:
        parsed = urlparse(ep)
        kwargs = {"endpoint_override": parsed.netloc, "scheme": parsed.scheme or "https"}
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        kwargs["region"] = region
    return rest, pafs.S3FileSystem(**kwargs)


def worker_env() -> dict[str, str]:
    """Environment variables that Ray workers need (passed via ``runtime_env``)."""
    env = {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}
    return env


def storage_options(url: str) -> dict[str, Any]:
    """fsspec options for a URL: for s3 URLs the endpoint, and botocore's retries (``S3_ATTEMPTS``
    attempts, adaptive mode: exponential backoff, slower when throttled)."""
    if urlparse(str(url)).scheme in ("s3", "s3a"):
        ep = endpoint_url()
        opts: dict[str, Any] = {"config_kwargs": {"retries": {"max_attempts": S3_ATTEMPTS, "mode": "adaptive"}}}
        return {**opts, "endpoint_url": ep} if ep else opts
    return {}


def filesystem(url: str):
    """``(fsspec filesystem, path)`` for a URL or local path."""
    import fsspec

    url = str(url)
    if not is_remote(url):
        return fsspec.filesystem("file"), absolute(url)
    fs, path = fsspec.core.url_to_fs(url, **storage_options(url))
    return fs, path


# --- faults: what went wrong with storage, in words --------------------------------

# Object storage clients retry transient errors (connection failures, throttling, 5xx) with
# backoff before geoseg gives up: botocore's "adaptive" mode (exponential backoff and a
# client-side rate limit when throttled) for fsspec/s3fs, GDAL_HTTP_MAX_RETRY for GDAL.
S3_ATTEMPTS = int(os.environ.get("GEOSEG_S3_ATTEMPTS", "6"))
_UNREACHABLE = {"EndpointConnectionError", "ConnectTimeoutError", "ConnectionClosedError", "ReadTimeoutError",
                "ClientConnectorError", "ClientConnectionError", "ServerDisconnectedError", "ServerTimeoutError",
                "ClientOSError", "ConnectionRefusedError", "ConnectionResetError", "ProxyConnectionError",
                "ConnectionError"}
_CREDENTIALS = {"ExpiredToken", "ExpiredTokenException", "RequestExpired", "TokenRefreshRequired",
                "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "InvalidClientTokenId",
                "RequestTimeTooSkewed", "NoCredentialsError", "PartialCredentialsError", "CredentialRetrievalError",
                "UnauthorizedSSOTokenError", "TokenRetrievalError"}
_DENIED = {"AccessDenied", "AllAccessDisabled", "AccountProblem", "Forbidden", "403"}
_THROTTLED = {"SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded", "TooManyRequests",
              "TooManyRequestsException", "RequestThrottled", "ServiceUnavailable", "503"}
_ERRNO = {"ENOSPC": "no space left on the device", "EDQUOT": "disk quota exceeded",
          "EROFS": "read-only file system", "EACCES": "permission denied", "EPERM": "operation not permitted",
          "EIO": "input/output error", "EFBIG": "file too large for the file system"}
# GDAL (libcurl, its /vsis3/ driver) and Arrow's S3 client say the same things in their own words
_SAID = [("couldn't connect", "unreachable"), ("connection refused", "unreachable"),
         ("could not resolve host", "unreachable"), ("timed out", "unreachable"),
         ("network_connection", "unreachable"), ("http response code: 0", "unreachable"),
         ("access denied", "denied"), ("access_denied", "denied"), ("http response code: 403", "denied"),
         ("expired", "credentials"), ("invalid_access_key_id", "credentials"), ("signaturedoesnotmatch", "credentials"),
         ("slow down", "throttled"), ("slow_down", "throttled"), ("http response code: 503", "throttled"),
         ("no space left", "ENOSPC"), ("read-only file system", "EROFS"), ("disk quota", "EDQUOT")]


def _chain(exc: BaseException):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        cause = getattr(exc, "cause", None)  # a Ray task error: the worker's own exception
        exc = cause if isinstance(cause, BaseException) else (exc.__cause__ or exc.__context__)


def _code(exc: BaseException) -> str | None:
    """The service's error code of a botocore ``ClientError`` (or the exception's class name)."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        code = (response.get("Error") or {}).get("Code")
        status = (response.get("ResponseMetadata") or {}).get("HTTPStatusCode")
        return str(code or status or "") or None
    return None


def fault_reason(exc: BaseException) -> str | None:
    """What went wrong, in words, when ``exc`` (or an exception behind it) is a storage fault:
    an endpoint that does not answer, credentials refused or expired, access denied,
    throttling that outlasted the retries, a full or read-only disk. None for anything else."""
    import errno as errno_mod

    said = None
    for e in _chain(exc):
        code, name = _code(e), type(e).__name__
        if "InvalidCredentials" in name or "SignatureDoesNotMatch" in name:  # GDAL's CPLE_AWS... errors
            code = "InvalidAccessKeyId"
        elif "AccessDenied" in name:
            code = "AccessDenied"
        for key in (code, name):
            if key in _CREDENTIALS:
                return f"the storage service refused the credentials ({key}: expired or invalid); renew them"
            if key in _DENIED:
                return "access denied"
            if key in _THROTTLED:
                return f"the storage service is throttling requests ({key}), still after {S3_ATTEMPTS} tries"
        if name in _UNREACHABLE:
            ep = (getattr(e, "kwargs", None) or {}).get("endpoint_url") or endpoint_url() or "of S3"
            ep = urlparse(ep)._replace(path="", query="").geturl() if "://" in str(ep) else ep
            return f"the storage endpoint {ep} is not reachable ({name}, still after {S3_ATTEMPTS} tries)"
        if isinstance(e, OSError) and e.errno is not None:
            key = errno_mod.errorcode.get(e.errno)
            if key in _ERRNO:
                return _ERRNO[key] + (f" ({e.filename})" if e.filename else "")
        text = str(e).lower()
        said = said or next((kind for words, kind in _SAID if words in text), None)
    if said in _ERRNO:
        return _ERRNO[said]
    return {"unreachable": f"the storage endpoint {endpoint_url() or 'of S3'} is not reachable",
            "denied": "access denied", "credentials": "the storage service refused the credentials "
            "(expired or invalid); renew them", "throttled": "the storage service is throttling requests"}.get(said)


@contextlib.contextmanager
def faults(url: str, doing: str = "") -> Iterator[None]:
    """Storage faults raised inside become one :class:`StorageError` naming ``url`` (and what
    was being done) and what happened; other errors pass unchanged."""
    try:
        yield
    except StorageError:
        raise
    except Exception as exc:  # noqa: BLE001 - only recognised faults are translated
        reason = fault_reason(exc)
        if reason is None:
            raise
        raise StorageError(f"{url}: {doing + ': ' if doing else ''}{reason}") from exc


def translating(url_of, doing: str = ""):
    """Decorator: the function's storage faults as one :class:`StorageError` (see :func:`faults`),
    naming the URL that ``url_of(*args, **kwargs)`` gives."""
    import functools

    def deco(fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            with faults(url_of(*args, **kwargs), doing):
                return fn(*args, **kwargs)
        return wrapper
    return deco


def _wrap(url: str, exc: Exception) -> StorageError:
    if isinstance(exc, StorageError):
        return exc
    reason = fault_reason(exc)
    if reason is not None:
        return StorageError(f"{url}: {reason}")
    if isinstance(exc, FileNotFoundError):
        return StorageError(f"{url}: not found")
    if isinstance(exc, PermissionError):
        return StorageError(f"{url}: access denied")
    msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return StorageError(f"{url}: {msg}")


def exists(url: str) -> bool:
    fs, path = filesystem(url)
    try:
        return fs.exists(path)
    except Exception as exc:  # noqa: BLE001 - surfaced as a one-line StorageError
        raise _wrap(url, exc) from exc


def read_text(url: str) -> str:
    fs, path = filesystem(url)
    try:
        with fs.open(path, "r") as f:
            return f.read()
    except Exception as exc:  # noqa: BLE001
        raise _wrap(url, exc) from exc


def write_text(url: str, text: str) -> None:
    """Write a small text object (UTF-8) atomically, as :func:`write_bytes`."""
    write_bytes(url, text.encode("utf-8"))


def write_bytes(url: str, data: bytes) -> None:
    """Write a small object atomically (local: write + rename; S3: one PUT)."""
    fs, path = filesystem(url)
    try:
        if is_remote(url):
            with fs.open(path, "wb") as f:
                f.write(data)
            return
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        tmp = f"{path}.tmp-{os.getpid()}"
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except Exception as exc:  # noqa: BLE001
        raise _wrap(url, exc) from exc


def signature(url: str) -> str:
    """What tells a file's versions apart without reading it: size and modification time (an
    object's ETag on object storage); a small text file (a VRT) by its content's hash, as
    geoseg rewrites VRTs with the same content."""
    import hashlib

    fs, path = filesystem(url)
    try:
        if str(url).lower().endswith(".vrt"):
            with fs.open(path, "rb") as f:
                return "sha1:" + hashlib.sha1(f.read()).hexdigest()
        info = fs.info(path)
    except Exception as exc:  # noqa: BLE001
        raise _wrap(url, exc) from exc
    stamp = info.get("ETag") or info.get("mtime") or info.get("LastModified") or info.get("created")
    return f"{info.get('size')}:{str(stamp).strip(chr(34))}"


def isdir(url: str) -> bool:
    """A folder (a local directory, or an object-storage prefix with objects under it)."""
    fs, path = filesystem(url)
    try:
        return bool(fs.isdir(path))
    except Exception as exc:  # noqa: BLE001
        raise _wrap(url, exc) from exc


def remove(url: str, recursive: bool = False) -> None:
    fs, path = filesystem(url)
    try:
        if fs.exists(path):
            fs.rm(path, recursive=recursive)
    except Exception as exc:  # noqa: BLE001
        raise _wrap(url, exc) from exc


def makedirs(url: str) -> None:
    if not is_remote(url):
        try:
            os.makedirs(local_path(url), exist_ok=True)
        except OSError as exc:
            raise StorageError(f"{url}: cannot create this folder ({exc.strerror or type(exc).__name__})") from None


def check_writable(url: str) -> None:
    """Fail early, in one line, when outputs cannot be written under the folder ``url``: writes and
    removes a small probe object (a read-only folder, a path below a regular file, a missing bucket
    or a denied PUT are found before any work)."""
    probe = join(url, f".geoseg-probe-{uuid.uuid4().hex}")
    makedirs(url)
    try:
        write_text(probe, "")
    except StorageError as exc:
        reason = str(exc).split(": ", 1)[-1]
        raise StorageError(f"{url}: outputs cannot be written here ({reason})") from None
    try:
        remove(probe)
    except StorageError:
        pass  # allowed to write but not to delete: a stray empty probe, harmless


def listdir(url: str) -> list[str]:
    """Names (not paths) directly under a folder URL; empty if it does not exist."""
    fs, path = filesystem(url)
    try:
        if not fs.exists(path):
            return []
        return sorted(posixpath.basename(p.rstrip("/")) for p in fs.ls(path, detail=False))
    except Exception as exc:  # noqa: BLE001
        raise _wrap(url, exc) from exc


def sizes(url: str) -> dict[str, int]:
    """``{name: bytes}`` of the files directly under a folder URL (one listing); empty if none."""
    fs, path = filesystem(url)
    try:
        if not fs.exists(path):
            return {}
        return {posixpath.basename(e["name"].rstrip("/")): int(e.get("size") or 0)
                for e in fs.ls(path, detail=True) if e.get("type") != "directory"}
    except Exception as exc:  # noqa: BLE001
        raise _wrap(url, exc) from exc


def put_file(local: str, url: str) -> None:
    """Copy a finished local file to its destination in one step."""
    if not is_remote(url):
        dst = local_path(url)
        os.makedirs(os.path.dirname(os.path.abspath(dst)), exist_ok=True)
        tmp = f"{dst}.tmp-{os.getpid()}"
        shutil.copyfile(local, tmp)
        os.replace(tmp, dst)
        return
    fs, path = filesystem(url)
    try:
        fs.put_file(local, path)
    except Exception as exc:  # noqa: BLE001
        raise _wrap(url, exc) from exc


def publish(local: str, url: str) -> None:
    """Put a finished local file at ``url`` whole: a rename beside it locally (the scratch file of
    :func:`staging_path` is on the same filesystem), one upload on object storage."""
    if is_remote(url):
        put_file(local, url)
        return
    dst = local_path(url)
    try:
        os.makedirs(os.path.dirname(os.path.abspath(dst)), exist_ok=True)
        os.replace(local, dst)
    except OSError as exc:
        raise _wrap(url, exc) from exc


@contextlib.contextmanager
def staging_path(url: str, suffix: str = "") -> Iterator[str]:
    """A local scratch path for building a file that ends up at ``url``: beside it where local (same
    filesystem, so the final move is a rename), else a temp file the caller uploads (:func:`put_file`)."""
    if is_remote(url):
        d = tempfile.mkdtemp(prefix="geoseg-")
    else:
        parent = os.path.dirname(os.path.abspath(local_path(url)))
        os.makedirs(parent, exist_ok=True)
        d = tempfile.mkdtemp(prefix=".geoseg-", dir=parent)
    try:
        yield os.path.join(d, "staged" + suffix)
    finally:
        shutil.rmtree(d, ignore_errors=True)


# The AWS settings a boto3 session is made from, once per process for each set of them (about
# 10 ms each; GDAL environments are entered per scene, per writer, per mosaic chunk).
_AWS_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_DEFAULT_PROFILE",
            "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_NO_SIGN_REQUEST", "AWS_SHARED_CREDENTIALS_FILE",
            "AWS_CONFIG_FILE", "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE")
_boto_sessions: dict[tuple, Any] = {}
_aws_sessions: dict[tuple, tuple] = {}  # settings -> (rasterio AWSSession, until when; a minute if no credentials)
NO_CREDENTIALS_S = 60.0


def _boto_session():
    """This process's boto3 session for the current AWS settings (it refreshes expiring credentials)."""
    import boto3

    key = tuple(os.environ.get(k) for k in _AWS_ENV)
    if key not in _boto_sessions:
        _boto_sessions[key] = boto3.Session()
    return _boto_sessions[key]


def gdal_env(**extra: Any):
    """A ``rasterio.Env`` with geoseg's GDAL settings (plus ``extra``) and the AWS credential chain,
    its AWS session made once per settings (botocore does not remember finding no credentials and
    asks the instance metadata service each time), anew after a minute where none were found."""
    import rasterio
    from rasterio.session import AWSSession

    opts = {**gdal_options(), **extra}
    try:
        ep = opts.get("AWS_S3_ENDPOINT")  # GDAL wants host:port, without the scheme
        unsigned = os.environ.get("AWS_NO_SIGN_REQUEST", "").upper() in ("YES", "TRUE", "1", "ON")
        key = (tuple(os.environ.get(k) for k in _AWS_ENV), ep, unsigned)
        session, until = _aws_sessions.get(key, (None, 0.0))
        if session is None or time.monotonic() > until:
            session = AWSSession(session=None if unsigned else _boto_session(), endpoint_url=ep)
            _aws_sessions[key] = (session, float("inf") if unsigned or session._creds is not None
                                  else time.monotonic() + NO_CREDENTIALS_S)
        return rasterio.Env(session=session, **opts)
    except Exception:  # noqa: BLE001 - no boto3 / no credentials: GDAL's own chain
        return rasterio.Env(**opts)


def zarr_store(url: str, read_only: bool = False):
    """A Zarr v3 store for a local path or fsspec URL."""
    import zarr

    url = str(url)
    if is_remote(url):
        return zarr.storage.FsspecStore.from_url(
            url, storage_options=storage_options(url), read_only=read_only
        )
    return zarr.storage.LocalStore(local_path(url), read_only=read_only)
