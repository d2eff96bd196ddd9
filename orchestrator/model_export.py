"""`spottune export`: from an adapter wherever the sweep wrote it to a merged model directory, GGUF and Hub repo.

Everything that can be refused is checked before any weight is loaded: the output location (a non-empty one
needs --force), the adapter location, the base model and, for --push, that the Hub is reachable in principle.
The model is built in a staging directory and only then published: a local output by one rename, an S3 output
by an upload; a failure on the way leaves what was at the output before untouched.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path

from cluster.storage import StorageURI, open_store, parse_uri
from orchestrator.adapters import local_adapter
from orchestrator.errors import SpecError

GGUF_DIR = "gguf"  # apart from the HF files: a tokenizer.json beside it would shadow the GGUF's own tokenizer


def export_command(adapter: str, run_id: str, endpoint_url: str | None = None) -> str:
    """The command line that exports this adapter (what `spottune report` prints for the best trial)."""
    endpoint = f" --storage-endpoint {endpoint_url}" if endpoint_url else ""
    return f"spottune export {adapter} --to exports/{run_id}-best{endpoint}"


def check_destination(uri: StorageURI, force: bool, endpoint_url: str | None) -> None:
    """A non-empty output location is only replaced with --force."""
    if uri.scheme == "file":
        path = Path(uri.path)
        if path.exists() and not path.is_dir():
            raise SpecError(f"--to: {path} is a file; give a directory (it is created)")
        occupied = path.is_dir() and any(path.iterdir())
    else:
        store = open_store(uri, endpoint_url)
        store.check()
        occupied = bool(store.list_dir(""))
    if occupied and not force:
        raise SpecError(f"--to: {uri} is not empty; choose an empty location or pass --force to replace it")


def check_push_possible(repo: str) -> None:
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        raise SpecError(f"--push {repo}: the Hugging Face Hub is offline here (HF_HUB_OFFLINE=1); "
                        "export to a directory and push it from a machine that is online")


def export_adapter(adapter: str, to: str, *, base: str | None = None, dtype: str = "bf16",
                   gguf_type: str | None = None, push: str | None = None, force: bool = False,
                   endpoint_url: str | None = None, log: Callable[[str], None] = print) -> str:
    """Merge `adapter` into its base and publish the model at `to`; returns the output location."""
    from train_core.generate import adapter_base_model
    from train_core.models.sources import resolve_model

    destination = parse_uri(to, "--to")
    check_destination(destination, force, endpoint_url)
    if push:
        check_push_possible(push)
    with local_adapter(adapter, endpoint_url) as adapter_dir:
        base_name = base or adapter_base_model(adapter_dir, flag="--base")
        resolved = resolve_model(base_name)
        log(f"merging {adapter} into {resolved.description} ({dtype})")
        staging_root = Path(destination.path).parent if destination.scheme == "file" else None
        if staging_root is not None:
            staging_root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".spottune-export-", dir=staging_root) as temporary:
            staging = Path(temporary) / "model"
            _build(resolved.path, adapter_dir, staging, dtype, gguf_type, base_name, log)
            _publish(staging, destination, endpoint_url)
    if push:
        _push(destination, push, endpoint_url, log)
    return str(destination)


def _build(base_path: str, adapter_dir: Path, staging: Path, dtype: str, gguf_type: str | None, base_name: str,
           log: Callable[[str], None]) -> None:
    from train_core.export import export_tokenizer, merged_model, save_merged

    model = merged_model(base_path, adapter_dir, dtype, base_name)
    tokenizer = export_tokenizer(base_path, adapter_dir)
    save_merged(model, tokenizer, staging)
    if gguf_type:
        from train_core.gguf_export import gguf_name, write_gguf

        (staging / GGUF_DIR).mkdir()
        path = write_gguf(model, tokenizer, staging / GGUF_DIR / gguf_name(model, gguf_type), gguf_type)
        log(f"gguf: {GGUF_DIR}/{path.name} ({gguf_type})")


def _publish(staging: Path, destination: StorageURI, endpoint_url: str | None) -> None:
    if destination.scheme == "s3":
        store = open_store(destination, endpoint_url)
        store.delete_prefix("")
        store.upload_dir(staging, "")
        return
    target = Path(destination.path)
    previous = target.parent / f".{target.name}.replaced-{uuid.uuid4().hex[:8]}"
    if target.exists():
        os.replace(target, previous)
    os.replace(staging, target)
    shutil.rmtree(previous, ignore_errors=True)


def _push(destination: StorageURI, repo: str, endpoint_url: str | None, log: Callable[[str], None]) -> None:
    from huggingface_hub import HfApi

    with tempfile.TemporaryDirectory(prefix="spottune-push-") as temporary:
        folder = Path(destination.path)
        if destination.scheme == "s3":
            folder = Path(temporary) / "model"
            open_store(destination, endpoint_url).download_dir("", folder)
        try:
            api = HfApi()
            api.create_repo(repo, exist_ok=True)
            api.upload_folder(folder_path=str(folder), repo_id=repo)
        except Exception as error:  # the Hub client raises HTTP, network and token errors of many kinds
            raise SpecError(f"--push {repo}: upload failed: {str(error).splitlines()[0]}; "
                            f"the export at {destination} is complete") from None
    log(f"pushed to https://huggingface.co/{repo}")
