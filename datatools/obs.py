"""Huawei OBS (object storage) for records and runs: ``obs://bucket/prefix`` URLs, a client built
from the environment, and transfers that either end verified or fail with one line.

Credentials come only from the environment (``OBS_ACCESS_KEY_ID``, ``OBS_SECRET_ACCESS_KEY``,
optional ``OBS_SECURITY_TOKEN``), read by the SDK itself on every request (its ENV policy): this
module never holds, logs or prints them, and error lines carry the URL, the HTTP status and the
error code, never a server's message about a refused credential; any other message is scrubbed of
the credentials' values (``scrubbed``). The endpoint is ``OBS_ENDPOINT``
or a caller's value.

The SDK (``esdk-obs-python``) reports a refused request as ``resp.status >= 300`` and raises only
for network errors; ``retrying`` turns both into one ``ObsError`` after retrying what may pass
on a second try (network errors, 5xx, 429) with exponential backoff.

Verification: an upload sends Content-MD5 (OBS refuses bytes that arrive changed, encrypted or
not) and stores the content's sha256 in the object's metadata; reading it back checks size,
sha256 and, for an unencrypted object, the ETag (the MD5 of the bytes the server got; OBS
documents that it is no content MD5 under server-side encryption). A download is hashed and
compared with the stored sha256. Uploads are single PUTs (up to OBS's 5 GB per PUT): the SDK's
multipart ``uploadFile`` sends its parts without Content-MD5, so nothing would check their bytes.
"""
from __future__ import annotations

import base64
import errno
import http.client
import logging
import os
import re
import socket
import ssl
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Callable

from obs import ObsClient, PutObjectHeader

from datatools.manifest import FileDigest

__all__ = ["SCHEME", "ObsError", "scrubbed", "ObsUrl", "parse_url", "is_obs_url", "ObjectInfo", "ObjectStat",
           "Bucket", "retrying", "refuse_oversized", "endpoint_from_env"]

log = logging.getLogger(__name__)

SCHEME = "obs://"
ENV_ENDPOINT = "OBS_ENDPOINT"
ENV_CREDENTIALS = ("OBS_ACCESS_KEY_ID", "OBS_SECRET_ACCESS_KEY")   # + optional OBS_SECURITY_TOKEN
ENV_TOKEN = "OBS_SECURITY_TOKEN"
SHA256_META = "sha256"          # user metadata: x-obs-meta-sha256 (x-amz-meta-sha256 under v2/v4)
ATTEMPTS = 4                    # tries of one request before giving up
BACKOFF_SECONDS = 0.5           # waits 0.5, 1, 2 s between tries
LIST_PAGE = 1000                # keys per listObjects page (OBS's maximum)
MAX_PUT = 5 * 10**9             # OBS's largest single-PUT object (5 GB)
BLOCK = 1 << 16                 # bytes downloaded at a time: an all-zero block is not written
PARTIAL = ".obs-partial"        # a download in progress: hidden name beside the final one

_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_DENIED_HINTS = {
    "SignatureDoesNotMatch": "the secret key does not match: check OBS_SECRET_ACCESS_KEY",
    "InvalidAccessKeyId": "unknown access key: check OBS_ACCESS_KEY_ID",
    "InvalidToken": "check OBS_SECURITY_TOKEN (temporary credentials)",
    "ExpiredToken": "temporary credentials expired: renew OBS_SECURITY_TOKEN",
    "AccessDenied": "the credentials may not do this on this bucket",
}
# Network trouble worth another try; any other OSError is local (a full disk, a missing file).
_TRANSIENT = (ConnectionError, TimeoutError, socket.gaierror, ssl.SSLEOFError, http.client.HTTPException)
_TRANSIENT_ERRNOS = {errno.ENETUNREACH, errno.EHOSTUNREACH, errno.ENETDOWN}
_DENIED = "access denied: check OBS_ACCESS_KEY_ID, OBS_SECRET_ACCESS_KEY and OBS_SECURITY_TOKEN"


class ObsError(OSError):
    """A request OBS refused or that could not reach it, as one line (run_cli: exit 1), without
    the credentials a server's message may quote (``scrubbed``)."""

    def __init__(self, message: str) -> None:
        super().__init__(scrubbed(message))


def scrubbed(text: str) -> str:
    """``text`` with each credential of the environment replaced by its variable's name: a
    server's message may quote the request's (S3's 400 AuthorizationHeaderMalformed quotes the
    access key id), and every line that leaves this module goes through here."""
    for name in (*ENV_CREDENTIALS, ENV_TOKEN):
        value = os.environ.get(name, "")
        if value:
            text = text.replace(value, f"<{name}>")
    return text


@dataclass(frozen=True)
class ObsUrl:
    """``obs://bucket/prefix``; ``prefix`` has no leading or trailing ``/`` ("" for the bucket)."""

    bucket: str
    prefix: str

    def key(self, relative: str) -> str:
        """The key of ``relative`` (a ``/``-separated path) under the prefix."""
        return f"{self.prefix}/{relative}" if self.prefix else relative

    def __str__(self) -> str:
        return f"{SCHEME}{self.bucket}/{self.prefix}" if self.prefix else f"{SCHEME}{self.bucket}"


def is_obs_url(text: str) -> bool:
    return text.startswith(SCHEME)


def parse_url(text: str) -> ObsUrl:
    """``obs://bucket[/prefix]``; anything else is one ValueError naming the expected form."""
    bucket, _, prefix = text[len(SCHEME):].partition("/") if is_obs_url(text) else ("", "", "")
    prefix = prefix.rstrip("/")
    parts = prefix.split("/") if prefix else []
    if not _BUCKET.match(bucket) or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"malformed OBS URL {text!r}: expected obs://bucket/prefix (bucket: 3-63 "
                         f"lowercase letters, digits, '-' or '.'; no empty, '.' or '..' in the prefix)")
    return ObsUrl(bucket, prefix)


def endpoint_from_env() -> str:
    endpoint = os.environ.get(ENV_ENDPOINT, "").strip()
    if not endpoint:
        raise ValueError(f"set {ENV_ENDPOINT} to the OBS endpoint of the bucket's region, e.g. "
                         f"https://obs.cn-north-4.myhuaweicloud.com")
    return endpoint


@dataclass(frozen=True)
class ObjectInfo:
    """One listed object."""

    key: str
    size: int


@dataclass(frozen=True)
class ObjectStat:
    """Size and digests of a stored object."""

    size: int
    etag: str
    sha256: str | None      # from the object's metadata, when an upload stored one
    encrypted: bool         # server-side encryption: the ETag is no content MD5

    def holds(self, digest: FileDigest) -> bool:
        """True when the object has the file's content: same size, and the stored sha256 or,
        for an unencrypted object stored without one, an ETag equal to the content MD5."""
        if self.size != digest.size:
            return False
        if self.sha256:
            return self.sha256 == digest.sha256
        return not self.encrypted and self.etag == digest.md5

    def received(self, digest: FileDigest) -> bool:
        """True when an upload of ``digest``'s file ended as this object: its size, its sha256,
        and (unencrypted) the MD5 the server computed from the bytes it received."""
        return (self.size == digest.size and self.sha256 == digest.sha256
                and (self.encrypted or self.etag == digest.md5))


def retrying(what: str, url: str, endpoint: str, call: Callable[[], Any],
             answers: tuple[int, ...] = ()) -> Any:
    """``call()`` (an SDK request to ``endpoint``) until it succeeds or its status is one of
    ``answers``; network errors, 5xx and 429 are tried ``ATTEMPTS`` times with exponential
    backoff, other refusals fail at once, as one ObsError. Local errors pass through."""
    for attempt in range(ATTEMPTS):
        try:
            resp = call()
        except (OSError, http.client.HTTPException) as exc:
            if not (isinstance(exc, _TRANSIENT) or getattr(exc, "errno", None) in _TRANSIENT_ERRNOS):
                raise       # local (a full disk, a missing file) or already an ObsError
            failure = f"cannot reach {endpoint}: {type(exc).__name__}: {exc}"
        else:
            if resp.status < 300 or resp.status in answers:
                return resp
            failure = _refusal(resp, endpoint)
            if resp.status < 500 and resp.status != 429:
                raise ObsError(f"{what} {url}: {failure}")
        if attempt + 1 < ATTEMPTS:
            log.warning("%s %s: %s; retrying", what, url, scrubbed(failure))
            time.sleep(BACKOFF_SECONDS * 2 ** attempt)
    raise ObsError(f"{what} {url}: {failure} (after {ATTEMPTS} attempts)")


def _refusal(resp: Any, endpoint: str) -> str:
    code = resp.errorCode or ""
    head = f"HTTP {resp.status}{' ' + code if code else ''}"
    if resp.status == 403:      # the server's message may quote the request: print only a hint
        return f"{head}: {_DENIED_HINTS.get(code, _DENIED)}"
    if code == "NoSuchBucket":
        return f"{head}: no such bucket at {endpoint}"
    return f"{head}: {resp.errorMessage}" if resp.errorMessage else head


def refuse_oversized(url: str, local: Path, size: int) -> None:
    """A file one PUT cannot take (``MAX_PUT``) is refused before it is read: a multipart upload
    would go unchecked (see above)."""
    if size > MAX_PUT:
        raise ObsError(f"upload {url}: {local} has {size} bytes, more than one PUT takes ({MAX_PUT}); "
                       f"split it")


class Bucket:
    """One bucket at one endpoint; the client is shared by threads (one request, one connection)."""

    def __init__(self, name: str, endpoint: str | None = None) -> None:
        missing = [v for v in ENV_CREDENTIALS if not os.environ.get(v)]
        if missing:
            raise ValueError(f"set {' and '.join(missing)} in the environment (and OBS_SECURITY_TOKEN "
                             f"for temporary credentials)")
        self.name = name
        self.endpoint = endpoint or endpoint_from_env()
        # An IP endpoint (a local S3 server) makes the SDK use path-style requests and v2 signing;
        # a host name gets OBS's virtual-host style and signature negotiation. Retries are ours.
        self._client = ObsClient(server=self.endpoint, security_provider_policy="ENV", max_retry_count=0)

    def url(self, key: str = "") -> str:
        return f"{SCHEME}{self.name}/{key}"

    def list(self, prefix: str) -> list[ObjectInfo]:
        """Every object whose key starts with ``prefix``, all pages."""
        found: list[ObjectInfo] = []
        marker = None
        while True:
            resp = retrying("list", self.url(prefix), self.endpoint, lambda: self._client.listObjects(
                self.name, prefix=prefix, marker=marker, max_keys=LIST_PAGE))
            page = resp.body.contents or []
            found += [ObjectInfo(o.key, int(o.size)) for o in page]
            if not resp.body.is_truncated or not page:
                return found
            marker = resp.body.next_marker or page[-1].key

    def stat(self, key: str) -> ObjectStat | None:
        """Size, ETag and stored sha256 of ``key``; None if there is no such object."""
        resp = retrying("stat", self.url(key), self.endpoint,
                        lambda: self._client.getObjectMetadata(self.name, key), answers=(404,))
        if resp.status == 404:
            return None
        meta = {k.lower(): v for k, v in resp.header or []}    # the SDK strips x-obs-meta-
        return ObjectStat(int(resp.body.contentLength), resp.body.etag.strip('"'), meta.get(SHA256_META),
                          bool(resp.body.sseKms or resp.body.sseC))

    def delete(self, key: str) -> None:
        retrying("delete", self.url(key), self.endpoint, lambda: self._client.deleteObject(self.name, key))

    def upload(self, local: Path, key: str, digest: FileDigest | None = None,
               progress: Callable[[int], None] | None = None) -> ObjectStat:
        """Store ``local`` as ``key`` with Content-MD5 (``digest``: of ``local``, with its MD5) and its sha256 in the metadata, then read
        the object back (``ObjectStat.received``). ``progress`` gets the bytes sent so far."""
        refuse_oversized(self.url(key), local, digest.size if digest else local.stat().st_size)
        digest = digest or FileDigest.of(local, md5=True)
        header = PutObjectHeader(md5=base64.b64encode(bytes.fromhex(digest.md5)).decode(),
                                 contentLength=digest.size)

        def put() -> Any:
            with open(local, "rb") as f:
                return self._client.putContent(self.name, key, _Reading(f, progress), autoClose=False,
                                               metadata={SHA256_META: digest.sha256}, headers=header)

        retrying("upload", self.url(key), self.endpoint, put)
        stored = self.stat(key)
        if stored is None or not stored.received(digest):
            raise ObsError(f"upload {self.url(key)}: read back {stored}, expected {digest}")
        return stored

    def download(self, key: str, local: Path, progress: Callable[[int], None] | None = None) -> ObjectStat:
        """Fetch ``key`` to ``local`` through a hidden partial name, check it against the object's
        sha256 (or plain ETag), then rename: ``local`` is never a partial file. Runs of zeros are
        skipped, not written, so sparse shards stay sparse. ``progress`` gets the bytes so far."""
        stored = self.stat(key)
        if stored is None:
            raise ObsError(f"download {self.url(key)}: HTTP 404: no such object")
        local.parent.mkdir(parents=True, exist_ok=True)
        partial = local.with_name(f".{local.name}{PARTIAL}")

        def get() -> Any:
            resp = self._client.getObject(self.name, key)       # no downloadPath: a stream
            if resp.status >= 300:
                return resp
            stream = resp.body.response
            try:
                with open(partial, "wb") as f:
                    while block := stream.read(BLOCK):
                        if block.count(0) == len(block):
                            f.seek(len(block), os.SEEK_CUR)
                        else:
                            f.write(block)
                        if progress:
                            progress(f.tell())
                    f.truncate()
            finally:
                stream.close()
            return resp

        try:
            retrying("download", self.url(key), self.endpoint, get)
            if not stored.holds(FileDigest.of(partial, md5=True)):
                raise ObsError(f"download {self.url(key)}: the bytes received do not match the "
                               f"object's {'sha256' if stored.sha256 else 'ETag'}")
            os.replace(partial, local)
        finally:
            partial.unlink(missing_ok=True)
        return stored


class _Reading:
    """The file an upload sends, read by the SDK, reporting the bytes read so far. (The SDK's own
    progress callback runs in a thread that may call it after the transfer ended.)"""

    def __init__(self, file: BinaryIO, progress: Callable[[int], None] | None) -> None:
        self._file, self._progress = file, progress

    def read(self, size: int = -1) -> bytes:
        data = self._file.read(size)
        if self._progress:
            self._progress(self._file.tell())
        return data
