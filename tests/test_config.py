"""Config composition: scale blocks, sweeps, run hashes and one-line errors naming key and file."""

import shutil

import pytest

from replicate import config as C

FIG = "gated_attention/attention_sink"


def test_figures_are_discovered_from_configs():
    assert FIG in C.list_figures()


def test_scale_block_is_merged_and_dropped():
    smoke = C.compose(FIG, "cpu", "smoke")
    default = C.compose(FIG, "cpu", "default")
    assert smoke.figure.run.trainer.max_steps < default.figure.run.trainer.max_steps
    assert "scales" not in smoke.figure
    assert smoke.figure.paper == "gated_attention" and smoke.figure.name == "attention_sink"


def test_points_are_the_sweep_product_and_interpolations_follow_them():
    cfg = C.compose(FIG, "cpu", "default", ["figure.sweep.seed=[4,5]"])
    pts = C.points(cfg)
    gates = list(cfg.figure.sweep["module.model.gate"])
    assert len(pts) == 2 * len(gates)
    run = C.run_config(cfg, 1)
    assert run.run.seed == 5 and run.run.data.seed == 5  # ${figure.run.seed} resolved per point
    assert run.run.module.model.gate == gates[0]


def test_run_hash_depends_on_what_changes_numbers_only():
    a = C.run_config(C.compose(FIG, "cpu", "default"), 0)
    b = C.run_config(C.compose(FIG, "cpu", "default", ["figure.run.module.optim.lr=0.0123"]), 0)
    c = C.run_config(C.compose(FIG, "cpu", "default", ["hardware.num_workers=3"]), 0)
    assert C.run_hash(a) != C.run_hash(b)
    assert C.run_hash(a) == C.run_hash(c)


def test_auto_hardware_resolves_to_a_real_profile():
    assert C.compose(FIG, "auto", "smoke").hardware.name in ("cpu", "gpu")


@pytest.mark.parametrize("args,message", [
    (("gated_attention/nope", "cpu", "smoke", []), "unknown figure 'gated_attention/nope'"),
    ((FIG, "tpu", "smoke", []), "unknown hardware 'tpu'"),
    ((FIG, "cpu", "huge", []), "unknown scale 'huge'"),
    ((FIG, "cpu", "smoke", ["figure.run.trainer.max_stepz=3"]), "max_stepz"),
    ((FIG, "cpu", "smoke", ["figure.run.trainer.max_steps=many"]), "figure/gated_attention/attention_sink.yaml"),
    ((FIG, "cpu", "smoke", ["figure.sweep.nonexistent=[1]"]), "Could not override 'figure.sweep.nonexistent'"),
    ((FIG, "cpu", "smoke", ["+figure.sweep.nonexistent=[1]"]), "sweep key 'nonexistent' is not a key of 'run'"),
])
def test_bad_input_is_one_clear_error(args, message):
    with pytest.raises(C.ConfigError, match=message.replace(".", r"\.")) as err:
        C.compose(*args[:3], overrides=args[3])
    assert "\n" not in str(err.value)


def test_wrong_type_names_the_key():
    with pytest.raises(C.ConfigError, match="max_steps"):
        C.compose(FIG, "cpu", "smoke", ["figure.run.trainer.max_steps=many"])


def test_point_out_of_range():
    cfg = C.compose(FIG, "cpu", "smoke")
    with pytest.raises(C.ConfigError, match="out of range"):
        C.run_config(cfg, 999)


def test_a_run_is_found_again_by_its_hash(tmp_path):
    cfg = C.compose(FIG, "cpu", "smoke")
    wanted = C.run_config(cfg, 3)
    assert C.find_run("gated_attention", C.run_hash(wanted), "cpu", "smoke") == wanted
    assert C.find_run("gated_attention", C.run_hash(wanted), "cpu", "smoke", out=tmp_path) == wanted  # plan cache


def test_a_sweep_may_be_a_list_of_grids_concatenated_in_order(tmp_path, monkeypatch):
    shutil.copytree(C.CONFIG_DIR, tmp_path / "configs")  # a copy: other tests list the real figures
    monkeypatch.setattr(C, "CONFIG_DIR", tmp_path / "configs")
    monkeypatch.setattr(C, "FIGURE_DIR", tmp_path / "configs" / "figure")
    paper_dir = C.FIGURE_DIR / "hypernet_mip"
    (paper_dir / "list_sweep.yaml").write_text(
        (paper_dir / "proportionality.yaml").read_text().split("\nsweep:")[0]
        + "\nsweep:\n  - {module.variant: [default, mip], seed: [0, 1]}\n  - {module.variant: [encoding]}\n"
        + "claims: []\nscales:\n  smoke:\n    sweep:\n      - {seed: [7]}\n")
    cfg = C.compose("hypernet_mip/list_sweep", "cpu", "default")
    assert C.points(cfg) == [{"module.variant": v, "seed": s} for v in ("default", "mip") for s in (0, 1)] \
        + [{"module.variant": "encoding"}]
    assert [r.run.module.variant for r in C.run_configs(cfg)][-1] == "encoding"
    smoke = C.compose("hypernet_mip/list_sweep", "cpu", "smoke")
    assert C.points(smoke) == [{"seed": 7}]  # a list in a scale block replaces the sweep


def test_every_figure_names_its_paper_source():
    """Each figure config gives the paper's arXiv id and the section/table it reproduces."""
    for figure in C.list_figures():
        fig = C.compose(figure, "cpu", "default").figure
        assert fig.source.where, figure
        assert C.arxiv_links(fig) and all(C.ARXIV_ID.search(u) for u in C.arxiv_links(fig))


def test_a_malformed_arxiv_id_is_one_clear_error(tmp_path):
    fig = C.OmegaConf.create({"source": {"arxiv": "2505.067", "where": "Table 1"}})
    with pytest.raises(C.ConfigError, match="source.arxiv '2505.067' is not an arXiv id"):
        C._check_source(fig, tmp_path / "f.yaml")
