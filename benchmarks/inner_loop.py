"""The researcher's inner loop: how long a plan and a training job's start-up take.

    python benchmarks/inner_loop.py --label after [--repeats 3] [--out /tmp/inner-loop]

Measures, each in a fresh process, with the CPU seconds of the child (user + sys) beside wall:

* ``plan_cold``: ``snakemake -n all`` with no plan cache under the out dir (every figure composed);
* ``plan_warm``: the same command again (the cache written by the cold run is read);
* ``startup``: ``python -m replicate run <paper> hash=<h>`` for a run that already finished
  (everything a training job does before training: imports, finding its config, the reuse check);
* ``help``: ``python -m replicate --help`` (the command line's own imports), with the modules
  ``-X importtime`` reports as the slowest and whether torch, lightning or pandas were imported.

Prints one JSON record (machine, load before and after, git commit) and, with ``--record FILE``,
appends it to that JSON list. Numbers, not assertions: tests never time anything.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "lightning", "pandas")


def timed(cmd: list[str]) -> dict:
    """Wall and child CPU seconds of one command (which must succeed)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # this checkout's package, also for a copy of it
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{result.stderr[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall_s": round(wall, 3), "cpu_s": round(cpu, 3), "stderr": result.stderr}


def summary(samples: list[dict]) -> dict:
    return {key: round(statistics.median(s[key] for s in samples), 3) for key in ("wall_s", "cpu_s")} | {
        "samples_wall_s": [s["wall_s"] for s in samples]}


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def plan(out: Path, repeats: int) -> dict:
    command = [sys.executable, "-m", "snakemake", "-n", "all", "--config", f"out={out}"]
    cold, warm = [], []
    for _ in range(repeats):
        shutil.rmtree(out / ".replicate", ignore_errors=True)
        cold.append(timed(command))
        warm.append(timed(command))
    return {"plan_cold": summary(cold), "plan_warm": summary(warm)}


def finished_run(out: Path) -> tuple[str, str]:
    """The paper and hash of a finished smoke run under ``out`` (trained here once if missing)."""
    sys.path.insert(0, str(ROOT))
    from replicate import config as C

    run_cfg = C.run_config(C.compose("gated_attention/attention_sink", "cpu", "smoke"), 0)
    if not (out / "runs" / run_cfg.paper / C.run_hash(run_cfg) / "metrics.json").is_file():
        timed([sys.executable, "-m", "replicate", "run", "gated_attention/attention_sink", "point=0",
               "hardware=cpu", "scale=smoke", f"out={out}"])
    return run_cfg.paper, C.run_hash(run_cfg)


def startup(out: Path, repeats: int) -> dict:
    paper, wanted = finished_run(out)
    command = [sys.executable, "-m", "replicate", "run", paper, f"hash={wanted}", "hardware=cpu",
               "scale=smoke", f"out={out}"]
    timed(command)  # the first call may write the plan cache: a job under Snakemake finds it written
    return {"startup": summary([timed(command) for _ in range(repeats)])}


def help_imports(repeats: int) -> dict:
    command = [sys.executable, "-X", "importtime", "-m", "replicate", "--help"]
    samples = [timed(command) for _ in range(repeats)]
    rows = [line.split("|") for line in samples[-1]["stderr"].splitlines() if line.startswith("import time:")]
    timed_rows = [(name[1:], int(total) / 1e6) for _, total, name in rows if total.strip().isdigit()]
    top = {name: round(seconds, 3) for name, seconds in timed_rows if not name.startswith(" ")}  # not nested
    imported = {name.strip() for name, _ in timed_rows}
    return {"help": summary(samples) | {
        "imports_s": round(sum(top.values()), 3),
        "slowest_imports_s": dict(sorted(top.items(), key=lambda kv: -kv[1])[:5]),
        "heavy_imported": sorted(m for m in HEAVY if m in imported)}}


def machine() -> dict:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor())
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    return {"cpus": os.cpu_count(), "cpu": model, "python": platform.python_version(),
            "commit": commit.stdout.strip()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--label", required=True, help="e.g. before / after")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("/tmp/inner-loop"))
    parser.add_argument("--record", type=Path, help="append the record to this JSON list")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    record = {"label": args.label, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "machine": machine(), "load_before": load()}
    record |= startup(args.out, args.repeats)
    record |= help_imports(args.repeats)
    record |= plan(args.out, args.repeats)
    record["load_after"] = load()
    for value in record.values():
        if isinstance(value, dict):
            value.pop("stderr", None)
    print(json.dumps(record, indent=1))
    if args.record:
        history = json.loads(args.record.read_text()) if args.record.is_file() else []
        args.record.write_text(json.dumps([*history, record], indent=1) + "\n")


if __name__ == "__main__":
    main()
