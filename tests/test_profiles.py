"""The workflow profiles: the slurm profile asks for the GPU one way only (checked with the plugin)."""

import subprocess
import sys

import pytest
import yaml

from replicate import config as C

PROFILE = C.REPO_ROOT / "profiles" / "slurm" / "config.yaml"


class _Resources(dict):
    __getattr__ = dict.__getitem__


class _Job:
    def __init__(self, resources: dict):
        self.resources = _Resources(resources)


def _train_resources(hardware: str) -> dict:
    """What Snakemake gives a `train` job under the slurm profile: the profile's defaults, the
    Snakefile's `gpu=<gpus_per_job>` and the profile's set-resources for `train`."""
    profile = yaml.safe_load(PROFILE.read_text())
    return {**profile.get("default-resources", {}), "gpu": C.load_hardware(hardware).gpus_per_job,
            **profile.get("set-resources", {}).get("train", {})}


@pytest.mark.parametrize("hardware, expected", [("gpu", " --gpus=1"), ("cpu", "")])
def test_slurm_train_jobs_request_the_gpu_once(hardware, expected):
    utils = pytest.importorskip("snakemake_executor_plugin_slurm.utils")
    assert utils.set_gres_string(_Job(_train_resources(hardware))) == expected


def test_the_slurm_profile_dry_runs(tmp_path):
    pytest.importorskip("snakemake_executor_plugin_slurm")
    result = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--profile", "profiles/slurm",
                             f"{tmp_path}/figures/moe_gating/topk_exact.png",
                             "--config", "hardware=gpu", "scale=smoke", f"out={tmp_path}"],
                            cwd=C.REPO_ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "train" in result.stdout
