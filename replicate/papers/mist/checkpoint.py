"""The shipped-checkpoint format of ``estimate()``: weights, constructor arguments, provenance.

A checkpoint file (``checkpoints/{mse,quantile}.pt``) is a dict

    init        MISTNet keyword arguments (the architecture)
    state_dict  the weights
    provenance  run (the run-store hash = the hash of the resolved run config, ``config_hash``),
                scale, objective, git_commit (of the code that exported it; "-dirty" when the
                paper's files had uncommitted changes), weights_sha256 (``weights_sha256`` of
                the state dict), trained (n_range, d_range, d_max, mi_prior, families of the
                meta-distribution it was trained on), steps, exported_utc

``import_net`` recomputes the weights' sha256 and refuses a file whose weights do not match it.
"""

from __future__ import annotations

import hashlib
import subprocess
from datetime import datetime, timezone
from pathlib import Path

import torch

from replicate.papers.mist.model import MISTNet

CHECKPOINT_DIR = Path(__file__).resolve().parent / "checkpoints"


def weights_sha256(state_dict: dict) -> str:
    """sha256 over the tensors of a state dict, in key order (name, dtype, shape, raw bytes)."""
    h = hashlib.sha256()
    for name in sorted(state_dict):
        t = state_dict[name].detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}:".encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    return h.hexdigest()


def git_commit(root: Path | None = None) -> str:
    """HEAD of the repository holding this package, with "-dirty" if the paper's files (its
    package, training and sweep configs; not the shipped checkpoints) differ from it; "unknown"
    outside a git checkout."""
    root = root or Path(__file__).resolve().parents[3]
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                              check=True).stdout.strip()
        # the shipped checkpoints themselves are excluded: exporting one must not mark the next dirty
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "replicate/papers/mist", "configs/training/mist",
                                "configs/parts/mist", ":(exclude)replicate/papers/mist/checkpoints"],
                               cwd=root, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("-dirty" if dirty else "")


def export_net(net: MISTNet, path: str | Path, provenance: dict) -> Path:
    """Write the network's weights, constructor arguments and provenance (what ``estimate`` loads);
    the weights' sha256 and the export time are added to ``provenance``. A file that already holds
    these weights from the same config is left as it is (its provenance names the commit that
    first exported them), so re-executing a notebook does not rewrite the shipped checkpoints."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
    digest = weights_sha256(state)
    if path.is_file():
        shipped = torch.load(path, map_location="cpu", weights_only=False).get("provenance", {})
        if (shipped.get("weights_sha256"), shipped.get("config_hash")) == (digest, provenance.get("config_hash")):
            return path
    record = {**provenance, "weights_sha256": digest,
              "exported_utc": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}
    torch.save({"init": dict(net.init_args), "state_dict": state, "provenance": record}, path)
    return path


def import_net(path: str | Path) -> MISTNet:
    """The network of a checkpoint file in eval mode, its provenance as ``net.provenance``."""
    saved = torch.load(path, map_location="cpu", weights_only=False)
    record = saved.get("provenance", {})
    digest = weights_sha256(saved["state_dict"])
    if record.get("weights_sha256") not in (None, digest):
        raise ValueError(f"{path}: weights sha256 {digest[:12]}... does not match the recorded "
                         f"{record['weights_sha256'][:12]}... (the file was altered)")
    net = MISTNet(**saved["init"])
    net.load_state_dict(saved["state_dict"])
    net.provenance = {**record, "weights_sha256": digest, "file": Path(path).name}
    return net.eval()


def load_net(run_dir: str | Path) -> MISTNet:
    """The trained network of a finished MIST run (its last checkpoint), in eval mode, with the
    run's trained ranges as ``net.provenance``."""
    from replicate.runs import load_module

    net = load_module(run_dir).net.eval()
    net.provenance = run_provenance(run_dir)
    return net


def run_provenance(run_dir: str | Path) -> dict:
    """What a finished run records about itself: its hash, objective and trained ranges."""
    from omegaconf import OmegaConf

    run_dir = Path(run_dir)
    cfg = OmegaConf.load(run_dir / "config.yaml")
    data = OmegaConf.to_container(cfg.run.data, resolve=True)
    return {"run": run_dir.name, "config_hash": run_dir.name, "objective": cfg.run.module.objective,
            "steps": int(cfg.run.trainer.max_steps),
            "trained": {"n_range": list(data["n_range"]), "d_range": list(data["d_range"]),
                        "d_max": int(data["d_max"]), "mi_prior": data.get("mi_prior"),
                        "families": list(data["train_families"])}}
