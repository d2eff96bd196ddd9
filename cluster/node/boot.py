"""The boot script every provider starts a node with: the same text apart from how the node gets spottune.

    #!/bin/bash
    (where the payload is; the storage endpoint when the run's storage is not AWS's own S3)
    (install: make "$SPOTTUNE_PYTHON" able to import spottune)
    exec "$SPOTTUNE_PYTHON" -m orchestrator.cli node run --payload ...

`local` uses the controller's own interpreter; `aws` downloads the wheel the controller uploaded to the run's
storage and pip-installs it (credentials from the instance profile); a Kubernetes pod's image already has it
(the pod runs this script after exporting KubeRay's `ray start` line).
A boot script never holds a credential: everything secret reaches the node through its role and storage.
"""
from __future__ import annotations

import shlex

HEADER = "#!/bin/bash\n# spottune node boot script\nset -euo pipefail\n"
ENTRY = 'exec "$SPOTTUNE_PYTHON" -m orchestrator.cli node run --payload "$SPOTTUNE_PAYLOAD"\n'

# `$SPOTTUNE_PYTHON` and `$SPOTTUNE_PIP_OPTIONS` are the image's to set (the AMI's Python by default); a wheel is
# fetched with boto3 (installed first where the image lacks it), which finds the instance profile's credentials and
# honours AWS_ENDPOINT_URL; the node needs the `train` extra (torch, transformers, peft) and the `cluster` one (Ray).
WHEEL_INSTALL = """SPOTTUNE_PYTHON="${{SPOTTUNE_PYTHON:-python3}}"
"$SPOTTUNE_PYTHON" -c "import boto3" 2>/dev/null || "$SPOTTUNE_PYTHON" -m pip install --quiet boto3
wheel_dir="$(mktemp -d)"
"$SPOTTUNE_PYTHON" - "$wheel_dir" {wheel} <<'FETCH'
import sys, boto3
target, uri = sys.argv[1], sys.argv[2]
bucket, _, key = uri[len("s3://"):].partition("/")
boto3.client("s3").download_file(bucket, key, f"{{target}}/{{key.rsplit('/', 1)[-1]}}")
FETCH
"$SPOTTUNE_PYTHON" -m pip install --quiet ${{SPOTTUNE_PIP_OPTIONS:-}} "$(ls "$wheel_dir"/*.whl)[train,cluster]"
"""


def local_install(python: str) -> str:
    """This machine's spottune, through the interpreter that runs the controller."""
    return f"SPOTTUNE_PYTHON={shlex.quote(python)}\n"


def wheel_install(wheel_uri: str) -> str:
    """The wheel at `wheel_uri` (s3://), installed with the image's Python."""
    if not wheel_uri.startswith("s3://"):
        raise ValueError(f"a node fetches its wheel from s3://, not {wheel_uri!r}")
    return WHEEL_INSTALL.format(wheel=shlex.quote(wheel_uri))


IMAGE_INSTALL = 'SPOTTUNE_PYTHON="${SPOTTUNE_PYTHON:-python3}"\n'  # an image with spottune installed (kubernetes)


def boot_script(payload_uri: str, storage_endpoint: str | None, install: str) -> str:
    """The node's whole boot script for the attempt whose payload is at `payload_uri`."""
    lines = [HEADER, f"export SPOTTUNE_PAYLOAD={shlex.quote(payload_uri)}\n"]
    if storage_endpoint:
        lines.append(f"export SPOTTUNE_STORAGE_ENDPOINT={shlex.quote(storage_endpoint)}\n")
    lines += [install, ENTRY]
    return "".join(lines)
