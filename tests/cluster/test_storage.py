"""cluster/storage.py: URI parsing, and the ObjectStore contract on a local directory and on a real S3 server."""
from __future__ import annotations

from pathlib import Path

import pytest

from cluster.errors import ClusterError
from cluster.storage import StorageURI, check_endpoint, check_writable, open_store, parse_uri
from train_core.checkpoint import LATEST_KEY, REQUIRED_FILES, CheckpointManager


@pytest.fixture(params=["file", "s3"])
def store_uri(request, tmp_path, monkeypatch) -> StorageURI:
    if request.param == "file":
        return StorageURI("file", "", str(tmp_path / "store"))
    server = request.getfixturevalue("s3_server")
    for name, value in server.env().items():
        monkeypatch.setenv(name, value)
    return StorageURI("s3", server.bucket, f"{server.prefix('store')}/runs/r1")


def _tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text, encoding="utf-8")
    return root


def test_parse_uri_forms():
    assert parse_uri("s3://bucket-1/a/b/") == StorageURI("s3", "bucket-1", "a/b")
    assert parse_uri("file:///tmp/x") == StorageURI("file", "", "/tmp/x")
    assert parse_uri("runs/x") == StorageURI("file", "", "runs/x")
    assert str(parse_uri("s3://bucket-1/a").child("run", "t000")) == "s3://bucket-1/a/run/t000"
    assert parse_uri("file://./runs").absolute(Path("/base")).path == "/base/runs"


@pytest.mark.parametrize("text, expected", [
    ("gs://bucket/x", "unsupported storage scheme 'gs://'"),
    ("s3://KEY:hunter2@bucket/x", r"credentials do not belong in a URI \(s3://\*\*\*@bucket/x\).*AWS_ACCESS_KEY_ID"),
    ("s3://KEY:hun/ter2@bucket/x", "a ':' in the bucket of an s3:// URI"),
    ("file://KEY:hunter2@host/x", r"credentials do not belong in a URI \(file://\*\*\*@host/x\)"),
    ("http://KEY:hunter2@host/x", "credentials do not belong in a URI"),
    ("s3://Bad_Bucket/x", "is not a valid S3 bucket name"),
    ("file://", "has no path"),
])
def test_parse_uri_rejects(text, expected):
    with pytest.raises(ClusterError, match=expected) as error:
        parse_uri(text)
    assert "hun" not in str(error.value) and "ter2" not in str(error.value)


@pytest.mark.parametrize("text, expected", [
    ("http://KEY:hunter2@127.0.0.1:8333", r"credentials do not belong in a URI \(http://\*\*\*@127.0.0.1:8333\)"),
    ("https://KEY:hun/ter2@host", "credentials do not belong in a URI"),
    ("https://KEY:hun@ter2@host", r"\(https://\*\*\*@host\)"),
    ("not a url", "is not an endpoint URL; accepted: http://HOST"),
    ("ftp://host", "is not an endpoint URL"),
    ("http://host:99999", "is not an endpoint URL"),
])
def test_check_endpoint_rejects(text, expected):
    with pytest.raises(ClusterError, match=expected) as error:
        check_endpoint(text)
    assert "hun" not in str(error.value) and "ter2" not in str(error.value)
    assert len(str(error.value).splitlines()) == 1


def test_check_endpoint_accepts_plain_endpoints():
    assert check_endpoint(" http://127.0.0.1:8333 ") == "http://127.0.0.1:8333"
    assert check_endpoint("https://s3.eu-west-1.amazonaws.com") == "https://s3.eu-west-1.amazonaws.com"


def test_an_endpoint_with_credentials_in_the_environment_is_refused(monkeypatch):
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://KEY:hunter2@127.0.0.1:1")
    with pytest.raises(ClusterError, match="AWS_ENDPOINT_URL: credentials do not belong") as error:
        open_store("s3://bucket-1/x")
    assert "hun" not in str(error.value) and "ter2" not in str(error.value)


def test_store_contract(store_uri, tmp_path):
    store = open_store(store_uri)
    assert store.read_text("checkpoints/latest") is None
    assert store.list_dir("checkpoints") == []
    source = _tree(tmp_path / "src", {"a.json": "A", "sub/b.bin": "B"})
    store.upload_dir(source, "checkpoints/step-00000001")
    store.upload_dir(source, "checkpoints/step-00000010")
    store.write_text("checkpoints/latest", "1\n")
    store.write_text("checkpoints/latest", "10\n")
    assert store.read_text("checkpoints/latest") == "10\n"
    assert store.list_dir("checkpoints") == ["latest", "step-00000001", "step-00000010"]
    assert store.list_dir("checkpoints/step-00000010") == ["a.json", "sub"]
    target = tmp_path / "dst"
    store.download_dir("checkpoints/step-00000010", target)
    assert (target / "sub" / "b.bin").read_text(encoding="utf-8") == "B"
    store.delete_prefix("checkpoints/step-00000001")
    assert store.list_dir("checkpoints") == ["latest", "step-00000010"]
    store.delete_prefix("checkpoints/step-00000099")
    assert store.describe("checkpoints/latest").endswith("checkpoints/latest")


def test_checkpoint_manager_prunes_uncommitted_steps(store_uri, tmp_path):
    store = open_store(store_uri)
    manager = CheckpointManager(store, tmp_path / "staging", keep=2)

    def write(directory: Path) -> None:
        for name in REQUIRED_FILES:
            (directory / name).write_text(name, encoding="utf-8")

    for step in (2, 4, 6):
        manager.save(step, write)
    half_written = _tree(tmp_path / "half", {REQUIRED_FILES[0]: "x"})
    store.upload_dir(half_written, "checkpoints/step-00000008")
    assert manager.latest_step() == 6
    manager.prune()
    assert store.list_dir("checkpoints") == ["latest", "step-00000004", "step-00000006"]
    assert store.read_text(LATEST_KEY).strip() == "6"


def test_check_writable_names_the_missing_bucket(s3_server, monkeypatch):
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    missing = r"bucket s3://no-such-bucket-here at http://127\.0\.0\.1:\d+ does not exist"
    with pytest.raises(ClusterError, match=missing):
        check_writable(parse_uri("s3://no-such-bucket-here/x"))


def test_check_writable_without_credentials(s3_server, monkeypatch, tmp_path):
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3_server.endpoint)
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with pytest.raises(ClusterError, match="no AWS credentials"):
        check_writable(parse_uri("s3://some-bucket/x"))
