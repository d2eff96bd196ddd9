"""The doctor's Ray and storage checks against a real local Ray and real folders / S3-compatible storage."""
from __future__ import annotations

from orchestrator.doctor_checks import check_ray, check_storage


def test_storage_check_writes_reads_and_deletes_a_probe(tmp_path):
    result = check_storage(f"file://{tmp_path / 'runs'}")
    assert result.passed, result.detail
    assert list((tmp_path / "runs").iterdir()) == []


def test_storage_check_fails_in_one_line_where_nothing_can_be_written(tmp_path):
    (tmp_path / "a-file").write_text("x")
    result = check_storage(f"file://{tmp_path / 'a-file' / 'runs'}")
    assert not result.passed and "cannot create" in result.detail and "\n" not in result.detail


def test_ray_check_starts_and_stops_a_local_ray():
    import ray

    result = check_ray()
    assert result.passed, result.detail
    assert "127.0.0.1" in result.detail and not ray.is_initialized()


def test_storage_check_on_s3_leaves_nothing_and_names_a_missing_bucket(s3_server, monkeypatch):
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    prefix = s3_server.prefix("doctor")
    assert check_storage(f"s3://{s3_server.bucket}/{prefix}").passed
    listed = s3_server.client().list_objects_v2(Bucket=s3_server.bucket, Prefix=prefix)
    assert listed.get("KeyCount", 0) == 0
    missing = check_storage(f"s3://no-such-bucket-{prefix.replace('/', '-')}/x")
    assert not missing.passed and "does not exist" in missing.detail
