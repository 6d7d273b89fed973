"""Tamper evidence for a figure's claims json: a digest of what the notebook computed.

The notebook step writes ``digest(record)`` into the json (field ``digest``); the scorecard
calls ``check(record, path)``, which recomputes it and refuses a json whose ``measurements``,
``claims`` or ``runs`` no longer hash to it. The digest names its three parts separately,

    measurements:<16 hex> claims:<16 hex> runs:<16 hex>

(each the first 64 bits of the sha256 of that field's canonical JSON: sorted keys, no spaces,
non-finite numbers as null, exactly as ``replicate.runs.write_json_atomic`` stores them), so a
mismatch is reported as one line naming the file and the field that changed. ``runs`` is the
list of the figure's training runs; an entry may carry ``metrics_sha256``
(:func:`metrics_sha256` of the run's metrics.json), which ``check(..., runs_dir=...)`` also
compares against a run store that holds the runs.

It is evidence against edits, not a signature: whoever recomputes the digest after an edit
passes this check (the scorecard's other checks, verdicts re-derived from the numbers and the
json compared with git, still apply).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Mapping

from replicate import config as C

FIELDS = ("measurements", "claims", "runs")
PART_HEX = 16


class IntegrityError(C.ConfigError):
    """A claims json whose numbers are not the ones its digest was made of (one line: file, field)."""


def part_sha256(value: Any) -> str:
    """sha256 of ``value``'s canonical JSON, after the conversions the json writer applies."""
    from replicate.runs import strict

    text = json.dumps(strict(value), sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()


def digest(record: Mapping[str, Any]) -> str:
    """The digest of ``record``'s ``measurements``, ``claims`` and ``runs`` (see the module docstring)."""
    return " ".join(f"{field}:{part_sha256(record.get(field))[:PART_HEX]}" for field in FIELDS)


def metrics_sha256(run_dir: str | Path) -> str:
    """sha256 of the bytes of a run's metrics.json: the identity of the result a figure read."""
    return hashlib.sha256((Path(run_dir) / "metrics.json").read_bytes()).hexdigest()


def check(record: Mapping[str, Any], path: str | Path = "?", runs_dir: str | Path | None = None) -> None:
    """Raise :class:`IntegrityError` unless ``record['digest']`` matches its fields, and, with
    ``runs_dir`` (``<out>/runs/<paper>``), unless every run there that the record names still has
    the metrics.json it was made from."""
    recorded = record.get("digest")
    if not isinstance(recorded, str):
        raise IntegrityError(f"{path}: no digest (written before figures carried one, or removed): "
                             "re-execute the figure")
    parts = dict(part.partition(":")[::2] for part in recorded.split())
    for field in FIELDS:
        if field not in parts:
            raise IntegrityError(f"{path}: digest {recorded!r} has no '{field}' part (edited digest?)")
        if part_sha256(record.get(field))[:PART_HEX] != parts[field]:
            raise IntegrityError(f"{path}: field '{field}' differs from what the notebook wrote "
                                 "(its digest does not match: edited json?); re-execute the figure")
    if runs_dir is not None:
        check_runs(record, path, Path(runs_dir))


def check_runs(record: Mapping[str, Any], path: str | Path, runs_dir: Path) -> None:
    """Each run of ``record`` present under ``runs_dir`` has the metrics.json the figure read."""
    for k, run in enumerate(record.get("runs") or []):
        wanted, metrics = run.get("metrics_sha256"), runs_dir / str(run.get("run")) / "metrics.json"
        if wanted and metrics.is_file() and metrics_sha256(metrics.parent) != wanted:
            raise IntegrityError(f"{path}: field 'runs[{k}].metrics_sha256': run {run.get('run')}'s "
                                 f"metrics.json ({metrics}) changed since the figure read it; re-execute the figure")
