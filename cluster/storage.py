"""Object storage behind train_core's ObjectStore protocol, for file:// (or a plain path) and s3:// URIs.

S3 works with any S3-compatible endpoint: set it with `endpoint_url` (a sweep's `storage_endpoint`) or the
standard AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL variables. Credentials come only from the environment or
boto3's standard chain; they are never part of a URI and never written anywhere by spottune: a URI or
endpoint with `user:password@` is refused, and the refusal does not repeat the secret.
S3 has no directory rename, so a step directory is visible while it uploads; the checkpoint contract
(readers trust only `checkpoints/latest`, written last with one atomic PUT) is what makes that safe.
"""
from __future__ import annotations

import errno
import os
import re
import time
from dataclasses import dataclass
from urllib.parse import urlsplit
from pathlib import Path
from typing import Callable
from urllib.parse import urlsplit

from cluster.errors import ClusterError
from train_core.store import LocalStore, ObjectStore

BUCKET_NAME = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
ACCEPTED = "file://PATH, s3://BUCKET/PREFIX or a local path"
ENDPOINT_ACCEPTED = "http://HOST[:PORT] or https://HOST[:PORT]"
CREDENTIALS_FROM_ENV = (
    "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE) in the environment and the endpoint "
    "with storage_endpoint or AWS_ENDPOINT_URL_S3"
)


def _redacted(text: str) -> str:
    """The URI with everything up to its last '@' after the scheme replaced by ***."""
    scheme, _, rest = text.partition("://")
    return f"{scheme}://***@{rest.rpartition('@')[2]}"


def refuse_credentials(text: str, field: str, anywhere: bool = False) -> None:
    """Raise when a URI carries userinfo (`scheme://user:secret@host`); the message never repeats the secret.

    `anywhere`: any '@' after the scheme counts (for endpoints, where a '/' in a password would otherwise hide
    it); else only one in the authority part (an S3 key may contain '@').
    """
    scheme, separator, rest = text.partition("://")
    if not separator:
        return
    authority = rest if anywhere else re.split(r"[/?#]", rest, maxsplit=1)[0]
    if "@" in authority:
        raise ClusterError(
            f"{field}: credentials do not belong in a URI ({_redacted(text)}); remove the 'user:password@' part "
            f"and {CREDENTIALS_FROM_ENV}"
        )


def check_endpoint(text: str | None, field: str = "storage_endpoint") -> str | None:
    """An S3 endpoint URL, checked: http(s), a host, a valid port, no credentials (None passes through).
    The message names what is accepted and never repeats the URL, which may hold a secret."""
    if text is None:
        return None
    text = text.strip()
    refuse_credentials(text, field, anywhere=True)
    parts = urlsplit(text)
    try:
        port_ok = parts.port is None or 0 < parts.port < 65536
    except ValueError:
        port_ok = False
    if parts.scheme not in ("http", "https") or not parts.hostname or not port_ok:
        raise ClusterError(f"{field}: is not an endpoint URL; accepted: {ENDPOINT_ACCEPTED}")
    return text


@dataclass(frozen=True)
class StorageURI:
    scheme: str  # "file" or "s3"
    bucket: str  # empty for file
    path: str  # local path for file, key prefix (no leading/trailing '/') for s3

    def __str__(self) -> str:
        if self.scheme == "file":
            return f"file://{self.path}"
        return f"s3://{self.bucket}/{self.path}" if self.path else f"s3://{self.bucket}"

    def child(self, *parts: str) -> "StorageURI":
        """The URI of a sub-prefix, e.g. uri.child(run_id, trial_id)."""
        tail = "/".join(part.strip("/") for part in parts if part.strip("/"))
        if self.scheme == "file":
            return StorageURI("file", "", str(Path(self.path) / tail) if tail else self.path)
        joined = "/".join(piece for piece in (self.path, tail) if piece)
        return StorageURI("s3", self.bucket, joined)

    def absolute(self, base: Path) -> "StorageURI":
        """Resolve a relative file:// path against `base`; s3 URIs are returned unchanged."""
        if self.scheme != "file" or Path(self.path).is_absolute():
            return self
        return StorageURI("file", "", str((base / self.path).resolve()))


def parse_uri(text: str, field: str = "storage") -> StorageURI:
    """Parse a storage location; errors name `field` and what is accepted."""
    text = text.strip()
    if not text:
        raise ClusterError(f"{field}: empty storage location; accepted: {ACCEPTED}")
    refuse_credentials(text, field)
    if text.startswith("file://"):
        path = text[len("file://"):]
        if not path:
            raise ClusterError(f"{field}: {text!r} has no path; accepted: {ACCEPTED}")
        return StorageURI("file", "", path)
    if text.startswith("s3://"):
        rest = text[len("s3://"):]
        bucket, _, prefix = rest.partition("/")
        if ":" in bucket:
            raise ClusterError(
                f"{field}: a ':' in the bucket of an s3:// URI (a port or credentials) is not accepted; "
                f"{CREDENTIALS_FROM_ENV}"
            )
        if not BUCKET_NAME.match(bucket):
            raise ClusterError(
                f"{field}: {bucket!r} is not a valid S3 bucket name (3-63 lowercase letters, digits, '.', '-')"
            )
        return StorageURI("s3", bucket, prefix.strip("/"))
    if "://" in text:
        scheme = text.split("://", 1)[0]
        raise ClusterError(f"{field}: unsupported storage scheme '{scheme}://'; accepted: {ACCEPTED}")
    return StorageURI("file", "", text)


def open_store(uri: StorageURI | str, endpoint_url: str | None = None) -> ObjectStore:
    """An ObjectStore rooted at `uri`."""
    location = parse_uri(uri) if isinstance(uri, str) else uri
    if location.scheme == "file":
        return LocalStore(location.path)
    return S3Store(location.bucket, location.path, endpoint_url)


def check_writable(uri: StorageURI, endpoint_url: str | None = None) -> None:
    """Fail with one line when the location cannot be written (missing bucket, no credentials, bad endpoint)."""
    check_endpoint(endpoint_url)
    if uri.scheme == "file":
        try:
            Path(uri.path).mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as error:
            raise ClusterError(f"storage: cannot create {uri.path}: {error.strerror}") from None
        return
    S3Store(uri.bucket, uri.path, endpoint_url).check()


class S3Store:
    """An ObjectStore over one prefix of an S3 bucket (AWS or any S3-compatible endpoint)."""

    def __init__(self, bucket: str, prefix: str, endpoint_url: str | None = None) -> None:
        import boto3
        from botocore.config import Config

        self.bucket = bucket
        self.prefix = prefix.strip("/")
        if endpoint_url:
            endpoint_url = check_endpoint(endpoint_url)
        else:
            for variable in ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"):
                if os.environ.get(variable):
                    endpoint_url = check_endpoint(os.environ[variable], field=variable)
                    break
        self.endpoint_url = endpoint_url
        config = Config(
            retries={"max_attempts": 4, "mode": "standard"},
            connect_timeout=5,
            read_timeout=60,
            s3={"addressing_style": "path"} if endpoint_url else None,
        )
        self.client = boto3.session.Session().client("s3", endpoint_url=endpoint_url, config=config)

    def _key(self, key: str) -> str:
        return "/".join(piece for piece in (self.prefix, key.strip("/")) if piece)

    def _keys_under(self, key_prefix: str) -> list[str]:
        base = self._key(key_prefix)
        paginator = self.client.get_paginator("list_objects_v2")
        keys: list[str] = []
        for page in paginator.paginate(Bucket=self.bucket, Prefix=f"{base}/" if base else ""):
            keys.extend(item["Key"] for item in page.get("Contents", []))
        return keys

    def upload_dir(self, local_dir: Path, key_prefix: str) -> None:
        local_dir = Path(local_dir)
        for path in sorted(p for p in local_dir.rglob("*") if p.is_file()):
            relative = path.relative_to(local_dir).as_posix()
            self.client.upload_file(str(path), self.bucket, self._key(f"{key_prefix}/{relative}"))

    def download_dir(self, key_prefix: str, local_dir: Path) -> None:
        base = self._key(key_prefix) + "/"
        for key in self._keys_under(key_prefix):
            target = Path(local_dir) / key[len(base):]
            target.parent.mkdir(parents=True, exist_ok=True)
            self.client.download_file(self.bucket, key, str(target))

    def read_text(self, key: str) -> str | None:
        from botocore.exceptions import ClientError

        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NotFound"):
                return None
            raise
        return response["Body"].read().decode("utf-8")

    def write_text(self, key: str, text: str) -> None:
        self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=text.encode("utf-8"))

    def list_dir(self, key_prefix: str) -> list[str]:
        base = self._key(key_prefix)
        prefix = f"{base}/" if base else ""
        names: set[str] = set()
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix, Delimiter="/"):
            names.update(entry["Prefix"][len(prefix):].rstrip("/") for entry in page.get("CommonPrefixes", []))
            names.update(item["Key"][len(prefix):] for item in page.get("Contents", []))
        return sorted(name for name in names if name)

    def delete_prefix(self, key_prefix: str) -> None:
        base = self._key(key_prefix)
        keys = self._keys_under(key_prefix) + [base]
        for start in range(0, len(keys), 1000):
            chunk = [{"Key": key} for key in keys[start : start + 1000]]
            self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": chunk, "Quiet": True})
        # Servers with a filer (SeaweedFS) keep implicit directories; remove them deepest first so listings
        # stay clean. On AWS these keys do not exist and each delete is a no-op.
        directories = {f"{base}/"}
        for key in keys[:-1]:
            parts = key[len(base) + 1 :].split("/")[:-1]
            directories.update(f"{base}/{'/'.join(parts[:depth])}/" for depth in range(1, len(parts) + 1))
        for directory in sorted(directories, key=lambda name: name.count("/"), reverse=True):
            self.client.delete_object(Bucket=self.bucket, Key=directory)

    def describe(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._key(key)}"

    def check(self) -> None:
        """One line on what is wrong when the bucket cannot be reached with the current credentials."""
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

        where = f"s3://{self.bucket}" + (f" at {self.endpoint_url}" if self.endpoint_url else "")
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except NoCredentialsError:
            raise ClusterError(
                f"storage: no AWS credentials for {where}; set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or a profile"
            ) from None
        except ClientError as error:
            code = error.response.get("Error", {}).get("Code", "?")
            problem = "does not exist" if code in ("404", "NoSuchBucket", "NotFound") else f"is not accessible ({code})"
            raise ClusterError(f"storage: bucket {where} {problem}") from None
        except BotoCoreError as error:
            raise ClusterError(f"storage: cannot reach {where}: {error}") from None


TRANSIENT_ERRNOS = {errno.ECONNREFUSED, errno.ECONNRESET, errno.ECONNABORTED, errno.ETIMEDOUT, errno.EHOSTUNREACH,
                    errno.ENETUNREACH, errno.EPIPE}
TRANSIENT_S3_CODES = {"500", "502", "503", "504", "InternalError", "ServiceUnavailable", "SlowDown", "RequestTimeout"}


def storage_errors() -> tuple[type[BaseException], ...]:
    """Every exception type a storage call may raise for a reason outside the caller (network, server, disk)."""
    try:
        from botocore.exceptions import BotoCoreError, ClientError
    except ImportError:
        return (OSError,)
    return (OSError, BotoCoreError, ClientError)


def is_transient(error: BaseException) -> bool:
    """Whether a storage error is an outage worth waiting out (unreachable, timing out, 5xx), not a refusal."""
    try:
        from botocore.exceptions import (ClientError, ConnectionClosedError, ConnectTimeoutError,
                                         EndpointConnectionError, ReadTimeoutError)
    except ImportError:
        pass
    else:
        if isinstance(error, (EndpointConnectionError, ConnectionClosedError, ConnectTimeoutError, ReadTimeoutError)):
            return True
        if isinstance(error, ClientError):
            return str(error.response.get("Error", {}).get("Code")) in TRANSIENT_S3_CODES
    return isinstance(error, (ConnectionError, TimeoutError)) or getattr(error, "errno", None) in TRANSIENT_ERRNOS


def describe_error(error: BaseException) -> str:
    lines = [line for line in str(error).splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[-1] if lines else ''}"


class Backoff:
    """Exponential waits (first, 2x, 4x ... capped) for retrying an unavailable service."""

    def __init__(self, first_s: float = 0.5, cap_s: float = 30.0) -> None:
        self.first_s, self.cap_s = first_s, cap_s
        self.failures = 0

    def next_wait(self) -> float:
        self.failures += 1
        return min(self.cap_s, self.first_s * 2 ** (self.failures - 1))

    def reset(self) -> None:
        self.failures = 0


class RetryingStore:
    """Wraps a store so that an outage (see is_transient) is waited out with backoff for up to `patience_s`.

    `on_outage(text)` is told when an outage starts (the error) and `on_outage(None)` when storage answers again;
    every operation of the protocol is idempotent, so a retried call repeats the whole of it.
    """

    def __init__(self, inner: ObjectStore, patience_s: float = 600.0,
                 on_outage: Callable[[str | None], None] | None = None, backoff: Backoff | None = None) -> None:
        self.inner = inner
        self.patience_s = patience_s
        self.on_outage = on_outage or (lambda text: None)
        self.backoff = backoff or Backoff()

    def _call(self, operation: str, key: str, *arguments):
        started = None
        while True:
            try:
                result = getattr(self.inner, operation)(*arguments)
            except storage_errors() as error:
                if not is_transient(error):
                    raise
                now = time.monotonic()
                if started is None:
                    started = now
                    self.on_outage(f"{operation} {self.inner.describe(key)}: {describe_error(error)}")
                if now - started >= self.patience_s:
                    raise
                time.sleep(self.backoff.next_wait())
                continue
            if started is not None:
                self.backoff.reset()
                self.on_outage(None)
            return result

    def upload_dir(self, local_dir: Path, key_prefix: str) -> None:
        self._call("upload_dir", key_prefix, local_dir, key_prefix)

    def download_dir(self, key_prefix: str, local_dir: Path) -> None:
        self._call("download_dir", key_prefix, key_prefix, local_dir)

    def read_text(self, key: str) -> str | None:
        return self._call("read_text", key, key)

    def write_text(self, key: str, text: str) -> None:
        self._call("write_text", key, key, text)

    def list_dir(self, key_prefix: str) -> list[str]:
        return self._call("list_dir", key_prefix, key_prefix)

    def delete_prefix(self, key_prefix: str) -> None:
        self._call("delete_prefix", key_prefix, key_prefix)

    def describe(self, key: str) -> str:
        return self.inner.describe(key)
