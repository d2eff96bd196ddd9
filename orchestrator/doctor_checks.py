"""The doctor's checks that need the orchestrator's components: a local Ray and the configured storage."""
from __future__ import annotations

import shutil
import tempfile
import time
import uuid

from train_core.doctor import CheckResult, run_check


def check_ray() -> CheckResult:
    """Start a one-CPU Ray on 127.0.0.1, run one task in it, and shut it down."""

    def body() -> str:
        import ray

        temp_dir = tempfile.mkdtemp(prefix="st-ray-", dir="/tmp")  # Ray's socket paths must stay short
        try:
            ray.init(
                address="local", num_cpus=1, include_dashboard=False, log_to_driver=False,
                _node_ip_address="127.0.0.1", _temp_dir=temp_dir, configure_logging=False,
            )
            try:
                answer = ray.get(ray.remote(lambda: 6 * 7).remote(), timeout=120)
            finally:
                ray.shutdown()
        finally:
            shutil.rmtree(temp_dir, ignore_errors=True)
        if answer != 42:
            raise RuntimeError(f"a Ray task returned {answer!r}")
        return f"ray {ray.__version__}: local instance on 127.0.0.1 ran a task and shut down"

    return run_check("ray", body)


def check_storage(uri: str, endpoint_url: str | None = None) -> CheckResult:
    """Write, read back, list and delete a probe object under `uri` (file://PATH or s3://BUCKET/PREFIX)."""

    def body() -> str:
        from cluster.storage import check_writable, open_store, parse_uri

        location = parse_uri(uri, "--storage")
        check_writable(location, endpoint_url)
        store = open_store(location, endpoint_url)
        probe = f".spottune-doctor-{uuid.uuid4().hex[:12]}"
        text = f"probe written at {time.time()}"
        store.write_text(f"{probe}/probe.txt", text)
        try:
            if store.read_text(f"{probe}/probe.txt") != text:
                raise RuntimeError(f"{store.describe(probe)}: the probe object read back differs")
        finally:
            store.delete_prefix(probe)
        if store.read_text(f"{probe}/probe.txt") is not None:
            raise RuntimeError(f"{store.describe(probe)}: the probe object is still there after delete")
        return f"{location}: wrote, read back and deleted a probe object"

    return run_check("storage", body)
