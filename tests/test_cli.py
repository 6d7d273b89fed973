"""`python -m replicate`: what a user types, and the one-line errors they get back."""

import pytest

from replicate.cli import main


@pytest.mark.parametrize("argv,message", [
    (["run", "gated_attention/nope", "point=0"], "unknown figure 'gated_attention/nope'"),
    (["run", "gated_attention/loss"], "run needs point=<k>"),
    (["run", "gated_attention/loss", "point=x"], "point must be an integer"),
    (["run", "gated_attention/loss", "point=0", "hardware=tpu"], "unknown hardware 'tpu'"),
    (["run", "gated_attention/loss", "point=0", "figure.run.trainer.max_stepz=3"], "max_stepz"),
    (["run", "gated_attention/loss", "point=0", "scale=smoke", "figure.run.data.source=tinystories"],
     "dataset 'tinystories' needs network or a local copy"),
    (["notebook"], "notebook needs a figure"),
    (["list", "oops"], "expected key=value"),
])
def test_user_errors_are_one_line_with_exit_status_2(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    assert main([*argv, f"out={tmp_path}"] if argv[0] == "run" else argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and message in err[-1]


def test_list_shows_every_figure_with_its_runs_and_claims(capsys):
    assert main(["list", "scale=smoke", "hardware=cpu"]) == 0
    out = capsys.readouterr().out
    assert "gated_attention/attention_sink" in out and "runs" in out and "sink_cut_headwise" in out
