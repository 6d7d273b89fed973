"""The cost plan (replicate/plan.py): `python -m replicate plan scale=... hardware=...`."""

from __future__ import annotations

import math

import pytest

from replicate import cli
from replicate import config as C
from replicate import plan as P


@pytest.fixture(scope="module")
def full_gpu_output():
    """The plan's table at scale=full on the GPU profile (every figure composed once)."""
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        status = cli.main(["plan", "scale=full", "hardware=gpu"])
    return status, buf.getvalue()


def test_full_gpu_plan_lists_every_figure_and_a_total(full_gpu_output):
    status, out = full_gpu_output
    assert status == 0, out
    assert "BROKEN" not in out
    rows = [line for line in out.splitlines() if line.startswith("| ")]
    header, body = rows[0], rows[1:]
    for column in ("runs", "largest model", "train FLOPs", "GPU-h", "peak mem / job", "disk kept"):
        assert column in header
    for figure in C.list_figures():
        assert any(row.startswith(f"| {figure} |") for row in body), figure
    total = [row for row in body if row.startswith("| **total**")]
    assert len(total) == 1
    assert "H100" in out and "MFU 30%" in out  # the stated device and utilisation


def test_bad_scale_or_hardware_is_one_line_and_status_2(capsys):
    assert cli.main(["plan", "scale=huge", "hardware=gpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "unknown scale 'huge'" in err
    assert cli.main(["plan", "scale=full", "hardware=tpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "unknown hardware 'tpu'" in err


def test_models_are_built_on_meta_without_storage():
    cfg = C.compose("gated_attention/loss", "gpu", "full")
    run_cfg = C.run_config(cfg, 0)
    from omegaconf import OmegaConf

    module = P._meta_module(OmegaConf.to_container(run_cfg.run.module, resolve=True))
    assert all(p.is_meta for p in module.parameters())
    assert 80e6 < sum(p.numel() for p in module.parameters()) < 100e6  # the ~85M full model


def test_mor_flops_come_from_its_own_counter():
    from replicate.papers.mixture_of_recursions import flops as F

    cfg = C.compose("mixture_of_recursions/isoflop", "cpu", "smoke")
    device = P.DEVICES["cpu"]
    for run_cfg in C.run_configs(cfg)[:3]:
        job = P.job_cost("x", run_cfg, device, {})
        module = P._meta_module(dict(run_cfg.run.module))
        per_step = F.train_flops_per_step(module.lm_config, module.mor_config, run_cfg.run.data.seq_len,
                                          run_cfg.run.data.batch_size)
        assert job.train_flops == pytest.approx(per_step * run_cfg.run.trainer.max_steps, rel=1e-9)
        assert job.unit == "tokens"
        assert job.examples == run_cfg.run.trainer.max_steps * run_cfg.run.data.batch_size * run_cfg.run.data.seq_len


def test_lm_flops_are_about_six_n_d_and_memory_covers_adam():
    cfg = C.compose("gated_attention/loss", "gpu", "full")
    run_cfg = C.run_config(cfg, 0)
    job = P.job_cost("gated_attention/loss", run_cfg, P.DEVICES["gpu"], {})
    six_nd = 6 * job.params * job.examples
    # embeddings are not multiply-adds, attention adds ~10% at T=1024, d=768
    assert 0.9 * six_nd < job.train_flops < 1.3 * six_nd
    assert job.memory_bytes > 16 * job.params  # fp32 weights + grads + AdamW moments
    assert job.checkpoint_bytes == pytest.approx(12 * job.params)
    hours = job.hours(P.DEVICES["gpu"])
    compute = (job.train_flops + job.val_flops) / (0.30 * 989e12)
    assert hours == pytest.approx((compute + P.DEVICES["gpu"].job_overhead_s) / 3600)


def test_small_models_pay_the_per_step_floor_and_em_its_rate():
    device = P.DEVICES["gpu"]
    cfg = C.compose("gated_attention/attention_sink", "gpu", "full")
    job = P.job_cost("x", C.run_config(cfg, 0), device, {})
    assert job.hours(device) == pytest.approx((job.steps * device.step_overhead_s + device.job_overhead_s) / 3600)
    em = P.job_cost("y", C.run_config(C.compose("moe_gating/topk_exact", "cpu", "smoke"), 0), device, {})
    assert em.unit == "samples" and em.params == 0 and em.val_flops == 0


def test_kept_checkpoints_count_towards_disk():
    cfg = C.compose("gated_attention/loss", "cpu", "smoke")
    run_cfg = C.run_config(cfg, 0)
    job = P.job_cost("x", run_cfg, P.DEVICES["cpu"], {})
    kept = job.disk_bytes
    job.keep_checkpoint = False
    assert kept - job.disk_bytes == pytest.approx(job.checkpoint_bytes)
    assert math.isfinite(job.log_bytes) and job.log_bytes > 0


def test_shared_runs_are_costed_once():
    plan = P.make_plan("smoke", "cpu", figures=["gated_attention/lr_stability", "gated_attention/massive_activations"])
    first, second = plan.figures
    assert first.runs == second.runs > 0
    assert len(first.jobs) == first.runs and second.jobs == []  # the same runs: costed in the first
    text = P.render(plan)
    assert "| **total** |" in text and "core-h" in text
