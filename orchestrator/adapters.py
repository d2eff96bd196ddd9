"""Read a trained adapter from wherever a run wrote it: a local directory, file://PATH or s3://BUCKET/PREFIX.

`generate` and `export` take the same adapter locations `spottune report` prints. A location may name the
adapter directory itself or a trial's prefix (its `adapter/` is used). S3 adapters are downloaded into a
temporary directory that lives as long as the `with` block.
"""
from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from cluster.storage import open_store, parse_uri
from orchestrator.errors import SpecError

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_SUBDIR = "adapter"


@contextmanager
def local_adapter(location: str, endpoint_url: str | None = None, field: str = "--adapter") -> Iterator[Path]:
    """A local directory holding the PEFT adapter at `location` (downloaded first when it is in S3)."""
    uri = parse_uri(location, field)
    store = open_store(uri, endpoint_url)
    if uri.scheme == "s3":
        store.check()  # a missing bucket or credentials: one line, not a boto traceback
    if store.read_text(ADAPTER_CONFIG) is not None:
        key = ""
    elif store.read_text(f"{ADAPTER_SUBDIR}/{ADAPTER_CONFIG}") is not None:
        key = ADAPTER_SUBDIR
    else:
        raise SpecError(
            f"{field}: no {ADAPTER_CONFIG} at {location} (nor in its {ADAPTER_SUBDIR}/); expected a PEFT adapter "
            "directory or a trial's storage prefix, as `spottune report` prints them"
        )
    if uri.scheme == "file":
        yield Path(uri.path) / key
        return
    with tempfile.TemporaryDirectory(prefix="spottune-adapter-") as temporary:
        target = Path(temporary) / "adapter"
        store.download_dir(key, target)
        yield target
