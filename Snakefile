# replicate: one target per figure, one job per training run. Rules only; logic is in replicate/.
#
#   snakemake all --cores all                                  # every figure + scorecard + report
#   snakemake figures/gated_attention/attention_sink.png --cores all
#   snakemake all --cores all --config hardware=gpu scale=full out=/scratch/replicate
#
# Figures come from configs/figure/<paper>/<figure>.yaml. A run's path carries the hash of its
# resolved config and a figure's job has the hash of its resolved config as a param, so editing
# one figure's config reruns that figure's jobs only (`snakemake -n all` shows it). The plan is
# cached under <out>/.replicate/plan, keyed by the contents of the config files each figure is
# composed from; the input functions below are lookups in dicts the plan computed once.

#
# Software: every rule runs the package from this checkout in the environment of envs/replicate.yaml
# (the dependencies of pyproject.toml; `--use-conda` builds it, otherwise the active environment
# is used). No container is published.

from pathlib import Path

import yaml
from snakemake.exceptions import WorkflowError
from snakemake.utils import min_version, validate

from replicate.pipeline import Plan, fail, out_prefix_hint, outside_out_pattern

min_version("8.0")

# A misspelt --config key (scal=smoke) is one line, not a default-scale plan. Validation runs
# when a key is not one of the schema's: importing jsonschema costs about 1.5 s of CPU, and the
# package checks the values themselves (unknown hardware or scale names) on every run.
CONFIG_SCHEMA = Path(workflow.basedir) / "schemas" / "config.schema.yaml"
if set(config) - set(yaml.safe_load(CONFIG_SCHEMA.read_text())["properties"]):
    try:
        validate(config, str(CONFIG_SCHEMA))
    except WorkflowError as err:
        reason = getattr(err.__context__, "message", str(err).splitlines()[0])  # jsonschema's line
        fail(f"--config: {reason} (the keys are hardware, scale and out)")

plan = Plan.for_snakemake(config)  # a bad --config value: one line, exit 2
# each figure's report caption (title, source, regime), read by report/figure.rst: kept here,
# not as a job param, so the report shows it once
config["captions"] = {figure: plan.caption(figure) for figure in plan.figures}

report: "report/workflow.rst"

wildcard_constraints:
    paper=r"[a-z0-9_]+",
    figure=r"[a-z0-9_]+",
    hash=r"[0-9a-f]{16}",


rule all:
    input:
        [plan.figure_outputs(f)[0] for f in plan.all_figures],  # a broken config fails with its line
        plan.path("figures", "SCORECARD.md"),
        plan.path("figures", "index.html"),
        plan.path("figures", "SCORECARD.rst"),


rule train:
    """One sweep point of one figure: a Lightning run in its own process."""
    input:
        code=lambda w: plan.training_code(w.paper),  # what training imports, not notebook helpers
    output:
        plan.path("runs", "{paper}", "{hash}", "metrics.json"),
    log:
        plan.path("logs", "runs", "{paper}", "{hash}.log"),
    threads: plan.hw.threads_per_job
    resources:
        gpu=plan.hw.gpus_per_job,
    params:
        # the run is named by its hash alone, whichever figure asks for it (no figure's param
        # here: a run shared by two figures must not rerun when one of them changes)
        hardware=plan.hardware,
        scale=plan.scale,
        out=lambda w: plan.out,  # a function: the out dir is a prefix of outputs, not a file
    conda:
        "envs/replicate.yaml"
    shell:
        "python -m replicate run {wildcards.paper} hash={wildcards.hash} hardware={params.hardware}"
        " scale={params.scale} out={params.out:q} > {log:q} 2>&1"


rule figure:
    """Execute the figure's notebook over its finished runs: png, pdf, executed notebook, claims."""
    input:
        # a two-stage seed design waits for its seeds checkpoint (replicate/seeds.py)
        runs=lambda w: plan.run_metrics(f"{w.paper}/{w.figure}", plan.seeds_decision(checkpoints.seeds, w)),
        notebook="notebooks/{paper}/{figure}.ipynb",
        code=lambda w: plan.paper_code(w.paper),
        configs=lambda w: plan.figure_configs(f"{w.paper}/{w.figure}"),
    output:
        # the png goes into `snakemake --report`, one category per paper (caption: report/figure.rst)
        report(plan.figure_outputs("{paper}/{figure}")[0], caption="report/figure.rst",
               category="{paper}", labels={"figure": "{figure}"}),
        plan.figure_outputs("{paper}/{figure}")[1:],
    params:
        config_sha256=lambda w: plan.figure_sha256(f"{w.paper}/{w.figure}"),
        hardware=plan.hardware,
        scale=plan.scale,
        out=lambda w: plan.out,  # a function: the out dir is a prefix of outputs, not a file
    log:
        plan.path("logs", "figures", "{paper}", "{figure}.log"),
    conda:
        "envs/replicate.yaml"
    shell:
        "python -m replicate notebook {wildcards.paper}/{wildcards.figure} hardware={params.hardware}"
        " scale={params.scale} out={params.out:q} > {log:q} 2>&1"


checkpoint seeds:
    """A two-stage seed design: the pilot's runs decide how many of the listed seeds to train."""
    input:
        runs=lambda w: plan.run_metrics(f"{w.paper}/{w.figure}"),  # the pilot's
        code=lambda w: plan.paper_code(w.paper),
    output:
        plan.path(".replicate", "seeds", "{paper}", "{figure}.json"),
    log:
        plan.path("logs", "seeds", "{paper}", "{figure}.log"),
    params:
        hardware=plan.hardware,
        scale=plan.scale,
        out=lambda w: plan.out,  # a function: the out dir is a prefix of outputs, not a file
    conda:
        "envs/replicate.yaml"
    shell:
        "python -m replicate seeds {wildcards.paper}/{wildcards.figure} hardware={params.hardware}"
        " scale={params.scale} out={params.out:q} > {log:q} 2>&1"


rule scorecard:
    """Every claim of every figure: the Markdown scorecard and the HTML report (one static page)."""
    input:
        json=[plan.figure_outputs(f)[3] for f in plan.all_figures],
        png=[plan.figure_outputs(f)[0] for f in plan.all_figures],
        page=[plan.figure_outputs(f)[4] for f in plan.all_figures],  # index.html links them
    output:
        report(plan.path("figures", "SCORECARD.md"), caption="report/scorecard.rst", category="Scorecard"),
        report(plan.path("figures", "index.html"), caption="report/index.rst", category="Scorecard"),
        plan.path("figures", "SCORECARD.rst"),  # the totals on the report's front page (report/workflow.rst)
    params:
        out=lambda w: plan.path("."),  # a function: the out dir is a prefix of outputs, not a file
    log:
        plan.path("logs", "scorecard.log"),
    conda:
        "envs/replicate.yaml"
    shell:
        "(python -m replicate scorecard out={params.out:q} && python -m replicate report out={params.out:q}"
        " && python -m replicate.workflow_report {params.out:q})"
        " > {log:q} 2>&1"


if plan.out != ".":

    rule missing_out_prefix:
        """A target under figures/, runs/ or logs/ outside out=: an error naming the path meant."""
        input:
            lambda w: fail(out_prefix_hint(w.target, plan.out)),
        output:
            "{target}",
        wildcard_constraints:
            target=outside_out_pattern(plan.out),
