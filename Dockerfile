# The image of the in-cluster controller (helm/spottune) and of every trial's RayCluster pods (the sweep's
# kubernetes.image). Build from the repository root:
#   docker build -t spottune:0.1.0 .
# Torch comes from PyPI's default Linux wheel, which is a CUDA build (the GPU pods need it; the controller
# only plans and watches and never touches a GPU). Override TORCH_SPEC to pin another build.
FROM python:3.11-slim-bookworm

ARG TORCH_SPEC="torch>=2.5"

# bash: KubeRay runs pod commands through it; wget: KubeRay's default Ray health probes call it.
RUN apt-get update \
 && apt-get install -y --no-install-recommends bash wget ca-certificates \
 && rm -rf /var/lib/apt/lists/*

RUN groupadd --gid 10001 spottune \
 && useradd --uid 10001 --gid 10001 --home-dir /home/spottune --create-home --shell /bin/bash spottune

WORKDIR /opt/spottune
COPY pyproject.toml README.md ./
COPY orchestrator ./orchestrator
COPY train_core ./train_core
COPY cost_models ./cost_models
COPY cluster ./cluster
COPY runspec ./runspec
RUN pip install --no-cache-dir "$TORCH_SPEC" \
 && pip install --no-cache-dir ".[train,cluster,k8s,gpu]"

# The chart runs this read-only as UID 10001 with HOME and caches under /tmp (an emptyDir) and the run
# state on a volume at /var/lib/spottune.
USER 10001:10001
ENV HOME=/home/spottune \
    SPOTTUNE_STATE_DIR=/var/lib/spottune \
    PYTHONUNBUFFERED=1
ENTRYPOINT ["spottune"]
CMD ["--help"]
