"""``python -m replicate <command>``

    list                                   every figure, its sweep size and claims
    run <paper>/<figure> point=K           train one sweep point (reused when already finished)
    run <paper> hash=H                     the same, naming the run by its hash (the Snakefile's form)
    notebook <paper>/<figure>              execute the figure's notebook (needs its runs)
    seeds <paper>/<figure>                 a two-stage figure: decide its seeds from the pilot runs
    scorecard                              rebuild <out>/figures/SCORECARD.md
    report                                 rebuild <out>/figures/index.html (every figure, one page)
    plan                                   cost of every figure's runs at a scale (FLOPs, hours, memory, disk)
    new-paper <name> [figure=<figure>]     scaffold a paper: package, figure config, notebook, test
    clean [--yes]                          run folders under <out>/runs/ no figure config asks for
                                           (listed with sizes; deleted only with --yes)
    store                                  the run-store files the figures read, to commit with them
                                           (`python -m replicate store | xargs git add`)

Every command takes ``hardware=<auto|cpu|gpu> scale=<smoke|default|full> out=<dir>``; ``run``
also takes Hydra overrides of the figure (``figure.run.trainer.max_steps=50``). Errors a user can
fix are printed as one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import sys

from replicate import config as C

OPTIONS = {"hardware": "auto", "scale": "default", "out": ".", "point": None, "hash": None}


def _split(tokens: list[str]) -> tuple[dict, list[str]]:
    """``key=value`` tokens: our options, then Hydra overrides for everything else."""
    options, overrides = dict(OPTIONS), []
    for token in tokens:
        key, sep, value = token.partition("=")
        if not sep:
            raise C.ConfigError(f"expected key=value, got '{token}'")
        if key in options:
            options[key] = value
        else:
            overrides.append(token)
    return options, overrides


def cmd_list(args, options, overrides):
    """Every figure; a broken figure config is reported on its own line and does not hide the rest."""
    broken = []
    for name in C.list_figures():
        try:
            cfg = C.compose(name, options["hardware"], options["scale"], overrides)
        except C.ConfigError as err:
            broken.append(str(err))
            print(f"{name:45s} BROKEN: {err}")
            continue
        claims = ", ".join(f"{c.id}" + ("" if c.kind == "paper" else f" ({c.kind})") for c in cfg.figure.claims)
        print(f"{name:45s} {len(C.points(cfg)):3d} runs   claims: {claims}")
    if broken:
        raise C.ConfigError(f"{len(broken)} figure config(s) broken; first: {broken[0]}")


def _requested_run(args, options, overrides):
    """The run asked for: a figure's sweep point, or (as the Snakefile asks) a paper's run hash."""
    if options["hash"] is not None:
        return C.find_run(args.figure, options["hash"], options["hardware"], options["scale"], options["out"])
    if options["point"] is None:
        raise C.ConfigError("run needs point=<k> (see `python -m replicate list`)")
    try:
        point = int(options["point"])
    except ValueError:
        raise C.ConfigError(f"point must be an integer, got '{options['point']}'") from None
    return C.run_config(C.compose(args.figure, options["hardware"], options["scale"], overrides), point)


def cmd_run(args, options, overrides):
    """Train one run; a signal that stops it is one line and the shell's status for that signal
    (143 SIGTERM, 130 SIGINT), with a checkpoint to resume from."""
    from replicate import runs

    try:
        directory = runs.ensure(_requested_run(args, options, overrides), options["out"])
    except runs.Interrupted as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        raise SystemExit(err.exit_status) from None
    metrics = runs.read_metrics(directory)
    which = f"hash={options['hash']}" if options["hash"] else f"point={options['point']}"
    print(f"{args.figure} {which}: {metrics['status']} after {metrics['steps']} steps, "
          f"val loss {metrics['final_val_loss']:.4f}, {metrics['wall_seconds']:.1f} s -> {directory}")


def cmd_notebook(args, options, overrides):
    from replicate.pipeline import execute_notebook

    if overrides:
        raise C.ConfigError(f"notebook takes no overrides (got {overrides}): edit the figure config")
    print(f"figure written: {execute_notebook(args.figure, options['hardware'], options['scale'], options['out'])}")


def cmd_seeds(args, options, overrides):
    """Decide a two-stage figure's seeds from its finished pilot runs (the Snakefile's checkpoint)."""
    from replicate import seeds

    cfg = C.compose(args.figure, options["hardware"], options["scale"], overrides)
    try:
        path = seeds.write_decision(cfg, options["out"])
    except (ValueError, FileNotFoundError) as err:
        raise C.ConfigError(str(err)) from None
    print(f"seeds decided: {path}")


def cmd_scorecard(args, options, overrides):
    from pathlib import Path

    from replicate import scorecard

    print(f"scorecard written: {scorecard.write(Path(options['out']) / 'figures')}")


def cmd_new_paper(args, options, overrides):
    from replicate import scaffold

    if not args.figure:
        raise C.ConfigError("new-paper needs a name: python -m replicate new-paper <name> [figure=<figure>]")
    extra = [t for t in args.settings if not t.startswith("figure=")]
    if extra:
        raise C.ConfigError(f"new-paper takes only figure=<figure>, got {' '.join(extra)}")
    figure = next((t.partition("=")[2] for t in args.settings if t.startswith("figure=")), "main")
    paper = args.figure
    written = scaffold.new_paper(paper, figure)
    root = C.REPO_ROOT
    print(f"created paper '{paper}' with figure '{paper}/{figure}':")
    for path in written:
        print(f"  {path.relative_to(root)}")
    print(f"""next:
  snakemake -n all                      # lists {paper}/{figure} and its training jobs
  snakemake /tmp/{paper}-smoke/figures/{paper}/{figure}.png --cores all --config scale=smoke out=/tmp/{paper}-smoke
  pytest tests/test_{paper}.py
then replace every TEMPLATE:  grep -rn TEMPLATE replicate/papers/{paper} configs/figure/{paper} notebooks/{paper} tests/test_{paper}.py""")


def cmd_report(args, options, overrides):
    from pathlib import Path

    from replicate import report

    print(f"report written: {report.write(Path(options['out']) / 'figures')}")


def cmd_clean(args, options, overrides):
    from replicate import clean

    if overrides:
        raise C.ConfigError(f"clean takes only out=<dir> and --yes, got {' '.join(overrides)}")
    print(clean.clean(options["out"], delete=args.yes))


def cmd_store(args, options, overrides):
    from replicate import store

    if overrides:
        raise C.ConfigError(f"store takes only out=<dir>, got {' '.join(overrides)}")
    print("\n".join(str(path) for path in store.shipped_run_files(options["out"])))


def cmd_plan(args, options, overrides):
    from replicate import plan

    print(plan.main(options["scale"], options["hardware"], overrides))


COMMANDS = {"list": cmd_list, "plan": cmd_plan, "run": cmd_run, "notebook": cmd_notebook, "seeds": cmd_seeds,
            "scorecard": cmd_scorecard, "report": cmd_report, "new-paper": cmd_new_paper,
            "clean": cmd_clean, "store": cmd_store}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m replicate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=sorted(COMMANDS))
    parser.add_argument("figure", nargs="?", help="<paper>/<figure> for run and notebook; <name> for new-paper")
    parser.add_argument("settings", nargs="*", help="key=value settings and overrides")
    parser.add_argument("--yes", action="store_true", help="clean: delete the listed run folders")
    args = parser.parse_args(argv)
    if args.figure and "=" in args.figure:
        args.settings.insert(0, args.figure)
        args.figure = None
    try:
        if args.command in ("run", "notebook", "seeds") and not args.figure:
            raise C.ConfigError(f"{args.command} needs a figure: one of {', '.join(C.list_figures())}")
        if args.command not in ("run", "notebook", "seeds", "new-paper") and args.figure:
            raise C.ConfigError(f"{args.command} takes no figure; expected key=value, got '{args.figure}'")
        options, overrides = _split(args.settings)
        COMMANDS[args.command](args, options, overrides)
    except C.ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        if err.filename is None:  # not a path problem the user can fix: let it raise
            raise
        print(f"error: cannot write or read {err.filename}: {err.strerror} "
              "(check the out= folder's permissions and free space)", file=sys.stderr)
        return 2
    return 0
