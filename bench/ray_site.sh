#!/usr/bin/env bash
# Build .whl/ray-site.tar.xz (Ray 2.60.0, unpacked and trimmed) and .whl/ray-deps.tgz (what Ray imports that the
# offline GPU machine lacks: jsonschema and its dependencies), beside the .whl/site.tgz of ../shared/tools/gpu-wheels.
# The GPU machine's python3 is 3.12 and has no `ray` console script: Ray runs from PYTHONPATH, which is all a one-node
# attempt needs (cluster/node/ray_node.py starts Ray inside the node process). Trimmed: the Java jars, RLlib, Serve,
# the LLM libraries, the dashboard's web client, the C++ API, workflows, every tests folder and __pycache__.
#
# Run it here, in your checkout's root:   bench/ray_site.sh      (about 3 minutes of CPU, most of it xz)
# Then start a GPU-machine command with (carry [".whl"]):
#   mkdir -p /tmp/site && tar xzf .whl/site.tgz -C /tmp/site && tar xJf .whl/ray-site.tar.xz -C /tmp/site &&
#   tar xzf .whl/ray-deps.tgz -C /tmp/site && export PYTHONPATH=$PWD:/tmp/site &&
set -euo pipefail
root=$(git rev-parse --show-toplevel)
cd "$root"
dl=$(mktemp -d); ray_site=$(mktemp -d); deps_site=$(mktemp -d)
trap 'rm -rf "$dl" "$ray_site" "$deps_site"' EXIT
download() {
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d "$1" "${@:2}"
}
download "$dl/ray" ray==2.60.0
download "$dl/deps" jsonschema==4.26.0 referencing==0.37.0 rpds-py==2026.9.1 jsonschema-specifications==2025.9.1
for w in "$dl"/ray/*.whl; do unzip -q -o "$w" -d "$ray_site"; done
for w in "$dl"/deps/*.whl; do unzip -q -o "$w" -d "$deps_site"; done
rm -rf "$ray_site"/ray/{jars,rllib,serve,llm,dashboard/client,cpp,workflow}
find "$ray_site" "$deps_site" -depth -type d \( -name tests -o -name __pycache__ \) -exec rm -rf {} +
mkdir -p .whl
tar cf - -C "$ray_site" . | xz -6 -T2 > .whl/ray-site.tar.xz
tar czf .whl/ray-deps.tgz -C "$deps_site" .
ls -la .whl/ray-site.tar.xz .whl/ray-deps.tgz
