"""This spottune as a wheel in the run's storage, so an EC2 node installs the exact code the controller runs
without a package index or a published release.

The wheel is built from the source tree the controller runs from (`pip wheel --no-deps --no-build-isolation`
of a copy of the packages pyproject.toml names), cached under the cache directory by a hash of those sources,
and uploaded once per run to `{storage}/{run}/node/`. A node fetches it with its instance profile
(cluster/node/boot.py's wheel_install); the profile's policy allows that prefix (docs/aws-iam-node.json).
"""
from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

from cluster.errors import ClusterError
from cluster.storage import open_store, parse_uri

SOURCE_ROOT = Path(__file__).resolve().parents[2]
PROJECT_FILES = ("pyproject.toml", "README.md")
IGNORED = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
WHEELS_DIR = "node-wheels"
NODE_PREFIX = "node"


def source_packages(root: Path = SOURCE_ROOT) -> list[str]:
    """The top-level packages the wheel holds: pyproject.toml's setuptools include patterns."""
    project = root / "pyproject.toml"
    if not project.is_file():
        raise ClusterError(f"aws: spottune is not running from a source tree ({root} has no pyproject.toml); "
                           "nodes install it from a wheel built from one: run the controller from a checkout")
    include = tomllib.loads(project.read_text(encoding="utf-8"))["tool"]["setuptools"]["packages"]["find"]["include"]
    return sorted({pattern.rstrip("*").rstrip(".") for pattern in include})


def _source_files(root: Path) -> list[Path]:
    files = [root / name for name in PROJECT_FILES]
    for package in source_packages(root):
        files += [path for path in (root / package).rglob("*") if path.is_file()
                  and "__pycache__" not in path.parts and path.suffix != ".pyc"
                  and not any(part.endswith(".egg-info") for part in path.parts)]
    return sorted(files)


def source_hash(root: Path = SOURCE_ROOT) -> str:
    """A digest of every file the wheel is built from (paths and contents)."""
    digest = hashlib.sha256()
    for path in _source_files(root):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def build_wheel(cache_dir: Path, root: Path = SOURCE_ROOT) -> Path:
    """The wheel of the sources under `root`, built once per source hash into cache_dir/node-wheels/HASH/."""
    target = cache_dir / WHEELS_DIR / source_hash(root)[:20]
    built = sorted(target.glob("*.whl"))
    if built:
        return built[0]
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
        source, out = Path(scratch) / "src", Path(scratch) / "out"
        source.mkdir()
        for name in PROJECT_FILES:
            shutil.copy2(root / name, source / name)
        for package in source_packages(root):
            shutil.copytree(root / package, source / package, ignore=IGNORED)
        result = subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet", "--wheel-dir",
             str(out), str(source)], capture_output=True, text=True)
        wheels = sorted(out.glob("*.whl")) if out.is_dir() else []
        if result.returncode != 0 or len(wheels) != 1:
            last = (result.stderr.strip().splitlines() or ["no wheel was written"])[-1]
            raise ClusterError(f"aws: building the node wheel of {root} failed: {last}")
        try:
            out.rename(target)
        except OSError:  # another controller built the same sources meanwhile
            pass
    return sorted(target.glob("*.whl"))[0]


class NodeWheel:
    """Builds the wheel on first use and uploads it once per run prefix; `uri()` is what nodes install."""

    def __init__(self, cache_dir: Path, root: Path = SOURCE_ROOT) -> None:
        self.cache_dir = cache_dir
        self.root = root
        self._uploaded: dict[str, str] = {}

    def uri(self, run_prefix: str, endpoint_url: str | None = None) -> str:
        """The wheel's URI under `{run_prefix}/node/`, uploading it there the first time."""
        if run_prefix not in self._uploaded:
            wheel = build_wheel(self.cache_dir, self.root)
            with tempfile.TemporaryDirectory() as staging:
                shutil.copy2(wheel, Path(staging) / wheel.name)
                open_store(run_prefix, endpoint_url).upload_dir(Path(staging), NODE_PREFIX)
            self._uploaded[run_prefix] = str(parse_uri(run_prefix).child(NODE_PREFIX, wheel.name))
        return self._uploaded[run_prefix]
