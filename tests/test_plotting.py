"""plotting.layout_problems: what matplotlib can tell of a figure a reader cannot read."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from replicate import plotting  # noqa: E402


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def test_a_clear_figure_has_no_problem():
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([0, 1, 2], [0, 1, 4], label="quadratic")
    ax.text(0.2, 3.5, "a note")
    ax.legend(loc="upper left")
    assert plotting.layout_problems(fig) == []


def test_crowded_tick_labels_are_reported_once_per_axis_with_an_example():
    fig, ax = plt.subplots(figsize=(3, 2))
    ax.plot(np.arange(6), np.arange(6))
    ax.set_xticks(np.arange(6), [f"setting number {i}" for i in range(6)])
    problems = plotting.layout_problems(fig)
    assert len(problems) == 1
    assert problems[0].startswith("panel 1: ") and "x tick labels overlap" in problems[0]
    assert "'setting number 0' and 'setting number 1'" in problems[0]
    ax.tick_params(axis="x", labelrotation=90)  # the usual fix
    assert plotting.layout_problems(fig) == []


def test_slanted_tick_labels_overlap_only_when_their_strips_do():
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.plot(np.arange(5), np.arange(5))
    ax.set_xticks(np.arange(5), ["baseline", "G1 headwise", "G1 elementwise", "G2 value", "input-indep."])
    ax.tick_params(axis="x", labelrotation=30)  # boxes overlap, glyphs do not
    assert plotting.layout_problems(fig) == []
    ax.set_xticks(np.linspace(0, 0.2, 5), ax.get_xticklabels())  # labels 0.05 apart: glyphs collide
    assert "x tick labels overlap" in plotting.layout_problems(fig)[0]


def test_end_labels_drawn_over_each_other_are_reported():
    fig, ax = plt.subplots(figsize=(4, 3))
    ax.plot([0, 1], [1.0, 1.0])
    ax.plot([0, 1], [1.02, 1.02])
    ax.set_ylim(0, 2)  # two curves ending 1% of the axis apart
    ax.text(1, 1.0, "vanilla")
    ax.text(1, 1.02, "recursive")
    ax.set_title("loss")
    assert plotting.layout_problems(fig) == ["panel 1 'loss': 1 pair(s) of text labels overlap, e.g. 'vanilla' and 'recursive'"]


def test_a_legend_over_plotted_points_is_reported_with_their_count():
    fig, ax = plt.subplots(figsize=(4, 3))
    x = np.linspace(0, 1, 50)
    ax.plot(x, np.ones_like(x), label="flat line through the legend")
    ax.scatter([0.5], [1.0], label="a point")
    ax.set_ylim(0, 2)
    ax.legend(loc="center")
    (problem,) = plotting.layout_problems(fig)
    assert problem.startswith("panel 1: the legend covers ") and "plotted point(s)" in problem
    assert int(problem.split("covers ")[1].split()[0]) >= 2
    ax.legend(loc="lower right")
    assert plotting.layout_problems(fig) == []
