"""figures/SCORECARD.md: every claim of every figure, from the figures' claims json.

    python -m replicate scorecard            # <out>/figures/SCORECARD.md (rule `scorecard`)

:func:`collect` reads every ``<figures>/<paper>/<figure>.json`` and returns one :class:`Entry`
per figure: the json record, the figure's title and regime (from its config, composed at the
json's own scale and hardware), and the reasons it is *stale*, if any. The scorecard and the
HTML report (replicate/report.py) are both rendered from that one list.

Verdicts are never typed. Every claim's verdict is re-derived here from the json's numbers
(measured value, interval, precondition values) and the rules of the figure's *config* (composed at
the json's scale and hardware). A json whose verdict does not follow, or whose rules differ from
its up-to-date config (an edited json), stops the scorecard with a one-line error naming the file
and the claim. A figure whose config changed after it was made is stale, and is re-checked against
the rules it was made with.

Totals count ``paper`` claims only. ``control`` claims (our ablations) are listed under the paper
claim they qualify; ``sanity`` checks (true by construction) get their own table, never counted.

Staleness. A figure is stale when something that made it changed after it was made:

* its figure config: the config is composed again (same figure, scale and hardware as the json)
  and its ``config_sha256`` compared with the json's. This covers the training and part configs
  it includes, and ignores edits that change nothing (comments);
* its paper's code (``replicate/papers/<paper>/**/*.py``) or its source notebook
  (``notebooks/<paper>/<figure>.ipynb``): stale when one of them is newer than the json. "Newer"
  compares *version times*: in a git checkout a file that is committed and unmodified dates from
  the last commit that touched it (committer time), so a fresh clone, whose file times are all the
  checkout time, still dates its files correctly and a json committed together with (or after)
  the code it came from is not stale; a file with uncommitted changes, an untracked file, and
  every file outside a git checkout date from their modification time.

Staleness is judged when the scorecard is generated; ``python -m replicate scorecard`` judges
again without running anything.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import subprocess
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path


from replicate import claims as claims_lib
from replicate import config as C
from replicate import integrity
from replicate.claims import VERDICTS
from replicate.environment import LOCK, lock_differences, read_lock

BADGE = {"replicated": "✅ replicated", "partial": "🟡 partial", "undecided": "🔵 undecided",
         "not_replicated": "❌ not replicated", "inconclusive": "⚪ inconclusive"}
STALE = "⚠️ stale"
# the same verdicts without an emoji font: a coloured dot (plain text where styles are stripped)
COLOUR = {"replicated": "#1a7f37", "partial": "#9a6700", "undecided": "#0969da",
          "not_replicated": "#cf222e", "inconclusive": "#6e7781"}


def text_badge(verdict: str) -> str:
    """``● replicated`` with the dot in the verdict's colour: for the notebooks and their pages."""
    return f'<span style="color:{COLOUR[verdict]}">●</span> {verdict.replace("_", " ")}'


class ScorecardError(C.ConfigError):
    """A claims json the scorecard cannot vouch for (one line: the file and the claim)."""


@dataclass
class Entry:
    """One figure: its claims json, its caption (from its config) and whether it is stale."""

    record: dict
    json_path: Path
    title: str = ""
    regime: str = ""
    config_path: Path | None = None
    stale: list[str] = field(default_factory=list)  # reasons; empty when up to date
    provenance: list[str] = field(default_factory=list)  # why its numbers may not rerun exactly

    @property
    def paper(self) -> str:
        return self.record["paper"]

    @property
    def name(self) -> str:
        return self.record["figure"]

    @property
    def key(self) -> str:
        return f"{self.paper}/{self.name}"

    @property
    def claims(self) -> list[dict]:
        return self.record.get("claims", [])

    def output(self, suffix: str) -> Path:
        """``<figures>/<paper>/<figure><suffix>``: the png, pdf or executed notebook beside the json."""
        return self.json_path.with_suffix(suffix)


# --------------------------------------------------------------------------- reading
def _read_strict(path: Path) -> dict:
    def refuse(constant):
        raise ValueError(f"non-finite number {constant} (write null and a note instead)")

    try:
        return json.loads(path.read_text(), parse_constant=refuse)
    except ValueError as err:  # JSONDecodeError is a ValueError
        raise ScorecardError(f"{path}: not strict JSON ({C._first_line(err)})") from None


def collect(figures_dir: str | Path, root: str | Path | None = None, compose: bool = True) -> list[Entry]:
    """Every figure under ``figures_dir``: record, caption, stale reasons; verdicts re-checked.

    ``root`` is the repository whose code, notebooks and config files are dated (default: the one
    this package belongs to); configs are composed from this package's ``configs/``.
    ``compose=False`` skips composing them (no caption; the config file is then judged by its
    version time instead of its hash, and verdicts are re-derived from the json's own rules).
    """
    root = Path(root) if root is not None else C.REPO_ROOT
    clock = VersionClock(root)
    lock = read_lock(root / LOCK.name)
    entries = []
    for path in sorted(Path(figures_dir).glob("*/*.json")):
        record = _read_strict(path)
        for key in ("paper", "figure", "claims"):
            if key not in record:
                raise ScorecardError(f"{path}: missing '{key}' (not a figure's claims json?)")
        entry = Entry(record, path)
        specs = _caption_and_config(entry, root, compose, out=Path(figures_dir).parent)
        if record.get("claim_contract") == claims_lib.CLAIM_CONTRACT:
            runs_dir = Path(figures_dir).parent / "runs" / entry.paper
            integrity.check(record, path, runs_dir if runs_dir.is_dir() else None)
            check_measurements(record, path)
            check_verdicts(record, path, specs)
        else:
            entry.stale.append(LEGACY)
        entry.stale += _newer_inputs(entry, root, clock, config_by_time=specs is None and not entry.stale)
        entry.provenance = provenance_warnings(record, lock)
        if clock.uncommitted(path):
            entry.provenance.append("its json differs from the committed copy (git HEAD): not yet "
                                    "committed, or edited by hand")
        entries.append(entry)
    check_paper_numbers_counted_once(entries)
    return entries


LEGACY = ("made under an earlier claim contract (intervals not recomputable from their units, "
          "3-seed percentile bootstraps, no `undecided` verdict): its verdicts are shown as made, "
          "not re-derived")


def check_measurements(record: dict, path: Path | str = "?") -> None:
    """Raise :class:`ScorecardError` unless every measurement's value and interval are what its
    units and estimator give (:func:`replicate.claims.recompute`), no percentile bootstrap rests on
    too few units, and each claim's number is its measurement's."""
    measurements = record.get("measurements") or {}
    for key, m in measurements.items():
        if not isinstance(m, dict) or "estimator" not in m:
            continue
        _check_one(m, f"{path}: measurement '{key}'")
    for claim in record["claims"]:
        where = f"{path}: claim '{claim.get('id', '?')}'"
        key = claim.get("measurement")
        if key not in measurements:
            raise ScorecardError(f"{where} reads measurement {key!r}, which the json does not hold")
        m = measurements[key]
        value, interval = (m.get("value"), m.get("interval")) if isinstance(m, dict) else (m, None)
        if not _same(claim.get("measured"), value if value is not None and math.isfinite(value) else None):
            raise ScorecardError(f"{where}: measured {claim.get('measured')!r} is not its measurement "
                                 f"'{key}' = {value!r} (edited json)")
        if not _same_interval(claim.get("interval"), interval):
            raise ScorecardError(f"{where}: interval {claim.get('interval')!r} is not its measurement "
                                 f"'{key}''s {interval!r} (edited json)")
        if "units" in claim and isinstance(m, dict) and claim["units"] != m.get("units"):
            raise ScorecardError(f"{where}: its units are not its measurement '{key}''s (edited json)")


def _check_one(m: dict, where: str) -> None:
    estimator = m.get("estimator") or {}
    if estimator.get("name") == "bootstrap" and len(m.get("units") or []) < claims_lib.MIN_BOOTSTRAP_UNITS:
        raise ScorecardError(f"{where}: a percentile bootstrap over {len(m.get('units') or [])} units "
                             f"(at least {claims_lib.MIN_BOOTSTRAP_UNITS} needed)")
    if m.get("interval") is not None and not m.get("units"):
        raise ScorecardError(f"{where}: an interval without its units cannot be checked")
    try:
        again = claims_lib.recompute(m)
    except (ValueError, TypeError, KeyError) as err:
        raise ScorecardError(f"{where}: cannot recompute its interval ({err})") from None
    stored = m.get("value")
    if not _same(None if again.value is None or not math.isfinite(again.value) else again.value,
                 None if stored is None or not math.isfinite(stored) else stored):
        raise ScorecardError(f"{where}: value {stored!r} but its units give {again.value!r} (edited json)")
    if not _same_interval(m.get("interval"), again.interval):
        raise ScorecardError(f"{where}: interval {m.get('interval')!r} but its units give "
                             f"{list(again.interval) if again.interval else None!r} (edited json)")


def _same(a, b) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)


def _same_interval(a, b) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return all(_same(x, y) for x, y in zip(a, b))


def check_paper_numbers_counted_once(entries: list["Entry"]) -> None:
    """A paper number (its source and the paper's value) is one paper claim, however many figures
    measure it: a second one must be a control."""
    seen: dict[tuple, str] = {}
    for e in entries:
        if e.record.get("claim_contract") != claims_lib.CLAIM_CONTRACT:
            continue
        for c in kind_claims(e):
            key = (e.paper, str(c.get("source", "")).strip(), str(c.get("paper_value", "")).strip())
            here = f"{e.key}:{c.get('id')}"
            if key in seen:
                raise ScorecardError(f"paper number counted twice: {seen[key]} and {here} both quote "
                                     f"{key[2]!r} ({key[1]}); make one of them a control")
            seen[key] = here


def provenance_warnings(record: dict, lock: dict[str, str]) -> list[str]:
    """Why a rerun of this figure may not give its numbers exactly: it was made from uncommitted
    changes, or with package versions other than the lock's (``requirements-lock.txt``)."""
    notes = []
    if str(record.get("git_commit", "")).endswith("-dirty"):
        notes.append(f"made from uncommitted changes (commit {short_commit(record)})")
    if lock:
        packages = (record.get("environment") or {}).get("packages")
        if packages is None:
            notes.append(f"records no package versions to compare with {LOCK.name}")
        else:
            differ = lock_differences(packages, lock)
            if differ:
                shown = ", ".join(differ[:4]) + (f" and {len(differ) - 4} more" if len(differ) > 4 else "")
                notes.append(f"made with package versions other than {LOCK.name}: {shown}")
    return notes


def check_verdicts(record: dict, path: Path | str = "?", specs: dict[str, dict] | None = None) -> None:
    """Raise :class:`ScorecardError` unless every verdict follows from the json's numbers.

    ``specs`` (claim id -> its config spec) are the up-to-date config's rules: a json whose rules,
    kind or claim list differ from them was edited. Without specs the json's own rules are used.
    """
    ids = [c.get("id", "?") for c in record["claims"]]
    if specs is not None and set(ids) != set(specs):
        raise ScorecardError(f"{path}: claims {sorted(set(ids) ^ set(specs))} differ between the json "
                             "and its config (edited json?)")
    for claim in record["claims"]:
        cid = claim.get("id", "?")
        if claim.get("verdict") not in VERDICTS:
            raise ScorecardError(f"{path}: claim '{cid}' has verdict {claim.get('verdict')!r}; "
                                 f"expected one of {', '.join(VERDICTS)}")
        if claim.get("kind") not in claims_lib.KINDS:
            raise ScorecardError(f"{path}: claim '{cid}' has kind {claim.get('kind')!r}; expected one "
                                 f"of {', '.join(claims_lib.KINDS)} (made before the claim contract?)")
        own = claim.get("rules") or {}
        if "replicated" not in own:
            raise ScorecardError(f"{path}: claim '{cid}' has no rules (not written by replicate/claims.py)")
        own_requires = {p.get("measured"): p.get("rule") for p in claim.get("requires") or []}
        rules = (own["replicated"], own.get("partial"), own_requires, claim["kind"])
        if specs is not None:
            spec = specs[cid]
            rules = (spec["replicated"], spec.get("partial"), dict(spec.get("requires") or {}), spec["kind"])
            if (own["replicated"], own.get("partial"), own_requires, claim["kind"]) != rules:
                raise ScorecardError(f"{path}: claim '{cid}': the json's rules or kind differ from its "
                                     "config's although the config is unchanged (edited json)")
        try:
            expected, _ = claims_lib.rejudge(claim, *rules[:3])
        except ValueError as err:
            raise ScorecardError(f"{path}: claim '{cid}': {err}") from None
        if expected != claim["verdict"]:
            raise ScorecardError(f"{path}: claim '{cid}' says '{claim['verdict']}' but measured "
                                 f"{claim.get('measured')!r}, interval {claim.get('interval')!r} under "
                                 f"'{claims_lib.criterion_text(*rules[:2])}' gives '{expected}' "
                                 "(verdicts are computed by the notebook, never edited)")


def _caption_and_config(entry: Entry, root: Path, compose: bool, out: Path) -> dict[str, dict] | None:
    """Title and regime from the figure's config; a config that changed makes the figure stale.

    Returns the config's claim specs by id when the config is unchanged (composed to the json's
    ``config_sha256``), else None: the verdicts are then checked against the json's own rules.
    The config comes from the plan cache under ``out`` (composed only when a file it is
    composed from changed).
    """
    path = root / "configs" / "figure" / entry.paper / f"{entry.name}.yaml"
    if not path.is_file():
        entry.stale.append(f"its figure config {_rel(path, root)} no longer exists")
        return None
    entry.config_path = path
    if not compose:
        return None
    try:
        composed = C.composed(entry.key, C.resolve_hardware_name(entry.record.get("hardware", "cpu")),
                              entry.record.get("scale", "default"), out)
    except C.ConfigError as err:
        entry.stale.append(f"its figure config no longer composes: {err}")
        return None
    figure = composed.figure
    entry.title, entry.regime = str(figure["title"]), str(figure["regime"]).strip()
    if entry.record.get("config_sha256") != composed.config_sha256:
        entry.stale.append(f"its figure config changed after it was made ({_rel(path, root)} "
                           f"now composes to another config_sha256 at scale "
                           f"{entry.record.get('scale')}, hardware {entry.record.get('hardware')})")
        return None
    return {c["id"]: c for c in figure["claims"]}


def inputs(paper: str, figure: str, root: Path, with_config: bool = False) -> list[Path]:
    """The files whose change makes a figure stale by time: paper code and source notebook."""
    files = sorted((root / "replicate" / "papers" / paper).rglob("*.py"))
    files.append(root / "notebooks" / paper / f"{figure}.ipynb")
    if with_config:
        files.append(root / "configs" / "figure" / paper / f"{figure}.yaml")
    return [f for f in files if f.is_file() and "__pycache__" not in f.parts]


def _newer_inputs(entry: Entry, root: Path, clock: "VersionClock", config_by_time: bool) -> list[str]:
    made = clock.time(entry.json_path)
    newer = [(clock.time(f), f) for f in inputs(entry.paper, entry.name, root, with_config=config_by_time)]
    newer = sorted((t, f) for t, f in newer if t > made)
    if not newer:
        return []
    kinds = sorted({"notebook" if f.suffix == ".ipynb" else "figure config" if f.suffix == ".yaml"
                    else "paper code" for _, f in newer})
    latest_t, latest = newer[-1]
    return [f"its {' and '.join(kinds)} changed after it was made: "
            + ", ".join(_rel(f, root) for _, f in newer[:3]) + (" ..." if len(newer) > 3 else "")
            + f" (latest {_when(latest_t)}; the json dates from {_when(made)})"]


class VersionClock:
    """When a file's current content came to be: last commit time if committed and unmodified
    in a git checkout, else its modification time (see the module docstring)."""

    def __init__(self, root: Path):
        self.top: Path | None = None
        self.commit_time: dict[str, float] = {}
        self.dirty: set[str] = set()
        top = _git(root, "rev-parse", "--show-toplevel")
        if top is None:
            return
        self.top = Path(top.strip()).resolve()
        status = _git(self.top, "status", "--porcelain", "-z", "--untracked-files=all", "--no-renames")
        for item in (status or "").split("\0"):
            if len(item) > 3:
                self.dirty.add(item[3:])
        log = _git(self.top, "-c", "core.quotepath=off", "log", "--no-renames", "--format=@%ct", "--name-only")
        when = 0.0
        for line in (log or "").splitlines():
            if line.startswith("@"):
                when = float(line[1:])
            elif line and line not in self.commit_time:
                self.commit_time[line] = when  # log runs newest first: the first time seen is the last change

    def uncommitted(self, path: Path) -> bool:
        """Whether ``path`` is in a git checkout and differs from HEAD (modified or untracked)."""
        if self.top is None:
            return False
        try:
            return Path(path).resolve().relative_to(self.top).as_posix() in self.dirty
        except ValueError:
            return False

    def time(self, path: Path) -> float:
        path = Path(path).resolve()
        if self.top is not None:
            try:
                rel = path.relative_to(self.top).as_posix()
            except ValueError:
                rel = None
            if rel is not None and rel not in self.dirty and rel in self.commit_time:
                return self.commit_time[rel]
        return path.stat().st_mtime


def _git(cwd: Path, *args: str) -> str | None:
    try:
        done = subprocess.run(["git", "-C", str(cwd), *args], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


def _rel(path: Path, root: Path) -> str:
    try:
        return Path(path).resolve().relative_to(Path(root).resolve()).as_posix()
    except ValueError:
        return str(path)


def _when(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


# --------------------------------------------------------------------------- counting
def kind_claims(entry_or_entries, kind: str = "paper") -> list[dict]:
    """The claims of one kind of an entry or a list of entries."""
    entries = entry_or_entries if isinstance(entry_or_entries, list) else [entry_or_entries]
    return [c for e in entries for c in e.claims if c.get("kind") == kind]


def counts(entries: list[Entry]) -> Counter:
    """``paper`` claims per verdict, plus ``stale`` (paper claims of stale figures), ``control``
    and ``sanity`` (how many of those there are: shown, never counted in the verdict totals)."""
    total = Counter(c["verdict"] for c in kind_claims(entries))
    total["stale"] = sum(len(kind_claims(e)) for e in entries if e.stale)
    total["control"] = len(kind_claims(entries, "control"))
    total["sanity"] = len(kind_claims(entries, "sanity"))
    return total


def paper_links(group: list[Entry]) -> list[str]:
    """The arXiv links of one paper's figures (each once, in order)."""
    return list(dict.fromkeys(u for e in group for u in (e.record.get("source") or {}).get("links", [])))


def papers(entries: list[Entry]) -> dict[str, list[Entry]]:
    out: dict[str, list[Entry]] = {}
    for e in sorted(entries, key=lambda e: (e.paper, e.name)):
        out.setdefault(e.paper, []).append(e)
    return out


def fmt(value) -> str:
    """A measured value as the scorecard prints it (4 significant digits)."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    return str(value)


def summary_line(total: Counter) -> str:
    n = sum(total[v] for v in VERDICTS)
    return (f"**{n} claims**: " + ", ".join(f"{total[v]} {v.replace('_', ' ')}" for v in VERDICTS)
            + f"; {total['stale']} stale. Not counted: {total['control']} controls (our ablations, "
            f"listed under the claim they qualify) and {total['sanity']} sanity checks")


def interval_text(claim: dict) -> str:
    """``[lo, hi] (n=3)``, or why there is none."""
    iv = claim.get("interval")
    n = claim.get("n")
    if iv:
        return f"[{fmt(iv[0])}, {fmt(iv[1])}] (n={n})"
    return f"— (n={n})" if n else "—"


def power_text(claim: dict) -> str:
    """``±0.031 (12)``: the claim's minimum detectable effect and the units that would decide it."""
    if claim.get("mde") is None:
        return "—"
    need = claim.get("units_to_decide")
    return claims_lib.mde_text(claim) + (f" ({need})" if need else "")


def notes_path(paper: str) -> Path | None:
    """The project's research notes on ``paper`` (docs/papers/<paper>.md), if there are any."""
    path = C.REPO_ROOT / "docs" / "papers" / f"{paper}.md"
    return path if path.is_file() else None


def answer_markdown(record: dict, page_dir: Path | None = None) -> str:
    """The answer of one figure, for the top of its executed notebook: totals, then every paper
    claim (its controls under it) with our number, interval, the paper's and the verdict's reason.
    With ``page_dir`` (where the notebook will live) it links the paper's research notes."""
    entry = Entry(record, Path(f"{record.get('figure', 'figure')}.json"))
    paper = kind_claims(entry)
    total = Counter(c["verdict"] for c in paper)
    lines = ["## The answer", "",
             f"**{len(paper)} paper claim{'s' if len(paper) != 1 else ''}**: "
             + ", ".join(f"{total[v]} {v.replace('_', ' ')}" for v in VERDICTS if total[v])
             + f" — at scale `{record.get('scale', '?')}` on `{record.get('hardware', '?')}` "
               f"(commit `{short_commit(record)}`). Verdicts are computed from each interval and "
               "the rules in the figure's config; how: the Claims section at the end.", "",
             f"![{record.get('title') or record.get('figure', 'figure')}]({record.get('figure', 'figure')}.png)", "",
             "| claim | verdict | ours [interval] (n) | MDE (n to decide) | paper | why |",
             "|---|---|---|---|---|---|"]
    for c, control in ordered_claims(entry):
        what = f"↳ control `{c['id']}`" if control else f"`{c['id']}`"
        source = f" ({c['source']})" if c.get("source") else ""
        lines.append(f"| {what}: {_cell(c.get('statement', ''))} | {text_badge(c['verdict'])} "
                     f"| {_cell(fmt(c.get('measured')))} {_cell(interval_text(c))} "
                     f"| {_cell(power_text(c))} | {_cell(c.get('paper_value', '') + source)} "
                     f"| {_cell(c.get('reason', ''))} |")
    lines += ["", source_markdown(record)]
    notes = notes_path(record.get("paper", ""))
    if notes is not None and page_dir is not None:
        lines[-1] += (f" Its equations as implemented here and every deviation from it: "
                      f"[{notes.name}]({relative_link(notes, page_dir)}).")
    if record.get("rerun"):
        lines += ["", f"Rerun this figure: `{record['rerun']}`"]
    sanity = kind_claims(entry, "sanity")
    if sanity:
        held = sum(c["verdict"] == "replicated" for c in sanity)
        lines += ["", f"Sanity checks (true by construction, not counted): {held} of {len(sanity)} hold"
                  + ("." if held == len(sanity) else ": " + ", ".join(
                      f"`{c['id']}` {c['verdict']}" for c in sanity if c["verdict"] != "replicated") + ".")]
    return "\n".join(lines)


def source_markdown(record: dict) -> str:
    """``Paper: arXiv 2505.06708 (link), <where>.`` from the json's ``source``."""
    source = record.get("source") or {}
    where = source.get("where", "")
    return f"Paper: {arxiv_markdown(source.get('links', []))}{', ' + where if where else ''}."


def arxiv_markdown(links: list[str]) -> str:
    """``[arXiv 2505.06708](https://arxiv.org/abs/2505.06708), ...`` (or a note when none)."""
    return ", ".join(f"[arXiv {url.rsplit('/', 1)[-1]}]({url})" for url in links) or "no arXiv id given"


def ordered_claims(entry: Entry) -> list[tuple[dict, bool]]:
    """Paper claims, each followed by the controls that qualify it: ``(claim, is_control)``."""
    controls = kind_claims(entry, "control")
    out = []
    for c in kind_claims(entry):
        out.append((c, False))
        out += [(k, True) for k in controls if k.get("qualifies") == c.get("id")]
    placed = {id(c) for c, _ in out}
    return out + [(k, True) for k in controls if id(k) not in placed]


def relative_link(target: Path, page_dir: Path) -> str:
    """``target`` as a link from a page in ``page_dir`` (forward slashes, works from file://)."""
    return Path(os.path.relpath(Path(target).resolve(), Path(page_dir).resolve())).as_posix()


def short_commit(record: dict) -> str:
    commit = str(record.get("git_commit", "unknown"))
    return commit[:7] + ("-dirty" if commit.endswith("-dirty") else "") if commit != "unknown" else commit


# --------------------------------------------------------------------------- markdown
def _cell(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def render(entries: list[Entry], page_dir: Path | None = None) -> str:
    """The scorecard as Markdown; links are relative to ``page_dir`` (the figures folder)."""
    page_dir = Path(page_dir) if page_dir is not None else (
        entries[0].json_path.parent.parent if entries else Path("."))
    total = counts(entries)
    lines = ["# Scorecard", "",
             "<!-- Generated by `python -m replicate scorecard` (rule `scorecard` of `snakemake all`) "
             "from figures/<paper>/<figure>.json. Do not edit: regenerate. -->", "",
             "Every claim of every figure. Each verdict was computed by the figure's notebook from "
             "the measured number, its interval over independent units (seeds, datasets, "
             "replicates) and the rules in the figure's config, and is re-derived from those when "
             "this page is generated: none is typed. *replicated*: the whole interval satisfies the "
             "claim's rule; *partial*: the whole interval meets the smallest effect of interest "
             "but not the paper's bar (a weaker effect); *not replicated*: the interval excludes "
             "the paper's bar; *undecided*: it reaches the paper's bar and falls below the smallest "
             "effect of interest, so the design cannot tell (MDE: the distance from the bar, or the "
             "factor for ratios, that its n separates with 80% power; n to decide: the units that "
             "would separate the current estimate from every bar); *inconclusive*: a precondition "
             "failed (the reason says which) or nothing finite was measured. Totals count the "
             "papers' claims only. How to read it: README, "
             "\"Reading the results\". Browse the figures: [index.html](index.html) (open the file "
             "in a browser; it works offline).", "",
             summary_line(total), ""]
    if not entries:
        return "\n".join(lines + ["No figures yet: run `snakemake all --cores all`.", ""])
    grouped = papers(entries)
    lines += ["| paper | figures | paper claims | " + " | ".join(BADGE[v] for v in VERDICTS)
              + f" | {STALE} | controls | sanity checks |",
              "|---|---:|---:|" + "---:|" * (len(VERDICTS) + 3)]
    for paper, group in grouped.items():
        c = counts(group)
        lines.append(f"| [{paper}](#{paper}) | {len(group)} | {sum(c[v] for v in VERDICTS)} | "
                     + " | ".join(str(c[v]) for v in VERDICTS)
                     + f" | {c['stale']} | {c['control']} | {c['sanity']} |")
    lines += [f"| **all** | {len(entries)} | {sum(total[v] for v in VERDICTS)} | "
              + " | ".join(f"**{total[v]}**" for v in VERDICTS)
              + f" | {total['stale']} | {total['control']} | {total['sanity']} |", ""]
    lines += cost_markdown(grouped)
    for paper, group in grouped.items():
        notes = notes_path(paper)
        lines += [f"## {paper}", ""]
        about = [f"Paper: {arxiv_markdown(paper_links(group))}"]
        if notes is not None:
            about.append(f"research notes: [{notes.name}]({relative_link(notes, page_dir)})")
        lines += ["; ".join(about) + ".", ""]
        lines += ["| figure | claim | paper | measured | interval (n) | MDE (n to decide) | rule | verdict | why |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for e in group:
            fig = (f"[{e.name}]({relative_link(e.output('.png'), page_dir)}) "
                   f"([page]({relative_link(e.output('.html'), page_dir)}), "
                   f"[notebook]({relative_link(e.output('.ipynb'), page_dir)}))")
            mark = f" {STALE}" if e.stale else ""
            for c, control in ordered_claims(e):
                what = (f"↳ control: `{c.get('id', '')}`" if control else f"`{c.get('id', '')}`")
                lines.append(f"| {fig} | {what} {_cell(c.get('statement', ''))} "
                             f"| {_cell(c.get('paper_value', ''))} | {_cell(fmt(c.get('measured')))} "
                             f"| {_cell(interval_text(c))} | {_cell(power_text(c))} "
                             f"| {_cell(c.get('criterion', ''))} "
                             f"| {BADGE[c['verdict']]}{mark} | {_cell(c.get('reason', ''))} |")
        sanity = [(e, c) for e in group for c in kind_claims(e, "sanity")]
        if sanity:
            lines += ["", "Sanity checks (true by construction or code checks; not counted):", "",
                      "| figure | check | measured | rule | result |", "|---|---|---|---|---|"]
            lines += [f"| {e.name} | `{c.get('id', '')}` {_cell(c.get('statement', ''))} "
                      f"| {_cell(fmt(c.get('measured')))} | {_cell(c.get('criterion', ''))} "
                      f"| {'✔ holds' if c['verdict'] == 'replicated' else '✘ ' + c['verdict']} |"
                      for e, c in sanity]
        lines.append("")
        lines += ["Figures:", ""] + [f"- {_provenance_md(e, page_dir)}" for e in group] + [""]
        lines += [f"- ⚠️ **{e.name}**: " + "; ".join(e.provenance) for e in group if e.provenance]
        lines += [""] if any(e.provenance for e in group) else []
        stale = [e for e in group if e.stale]
        if stale:
            lines += [f"{STALE}: made before a change to what makes it; its numbers may no longer "
                      "be what the code gives (rerun: `snakemake <its png> --cores all`).", ""]
            lines += [f"- **{e.name}**: " + "; ".join(e.stale) for e in stale]
            lines.append("")
    return "\n".join(lines)


def paper_cost(group: list[Entry]) -> dict:
    """What one paper's shipped figures cost, from their json: distinct training runs and the sum
    of their wall times (a run shared by two figures counts once), the notebooks' wall time, and
    the machine with the highest 1-minute load average seen while its figures were made."""
    runs = {r["run"]: r["wall_seconds"] for e in group for r in e.record.get("runs", [])}
    envs = [e.record.get("environment") or {} for e in group]
    loads = [env["load_average"][0] for env in envs if env.get("load_average")]
    return {"runs": len(runs), "train_minutes": sum(runs.values()) / 60,
            "notebook_minutes": sum(e.record.get("notebook_wall_seconds") or 0 for e in group) / 60,
            "machine": ", ".join(sorted({f"{env.get('cpu', '?')} ×{env.get('cpu_count', '?')}"
                                         + (f", {env['gpu']}" if env.get("gpu") else "") for env in envs})),
            "max_load": max(loads) if loads else None}


def cost_markdown(grouped: dict[str, list[Entry]]) -> list[str]:
    """The "What it cost" table: per paper, from the figures' own json (never typed)."""
    lines = ["## What it cost", "",
             "From each figure's json: training = the sum of its distinct runs' wall times (one "
             "torch thread per run, so core-minutes on a machine with a core per job; on a shared "
             "machine they include the waiting, so they are upper bounds); notebooks = executing "
             "them. The load average is the highest seen while the notebooks ran (runs do not "
             "record theirs).", "",
             "| paper | runs | training (core-min) | notebooks (min) | machine | max 1-min load (notebooks) |",
             "|---|---:|---:|---:|---|---:|"]
    total = {"runs": 0, "train_minutes": 0.0, "notebook_minutes": 0.0}
    for paper, group in grouped.items():
        c = paper_cost(group)
        load = f"{c['max_load']:.1f}" if c["max_load"] is not None else "—"
        lines.append(f"| {paper} | {c['runs']} | {c['train_minutes']:.1f} | {c['notebook_minutes']:.1f} "
                     f"| {_cell(c['machine'])} | {load} |")
        total = {k: total[k] + c[k] for k in total}
    lines += [f"| **all** | {total['runs']} | {total['train_minutes']:.1f} | {total['notebook_minutes']:.1f} | | |", ""]
    return lines


def _provenance_md(e: Entry, page_dir: Path) -> str:
    config = (f", [config]({relative_link(e.config_path, page_dir)})" if e.config_path else "")
    started = str(e.record.get("started", ""))[:10]
    wall = e.record.get("wall_seconds")
    wall = f", {wall:.0f} s" if isinstance(wall, (int, float)) else ""
    return (f"**{e.name}** — {e.title or e.name}: scale {e.record.get('scale', '?')}, hardware "
            f"{e.record.get('hardware', '?')}, commit `{short_commit(e.record)}`, {started}{wall}{config}")


def write(figures_dir: str | Path, entries: list[Entry] | None = None) -> Path:
    """Write ``<figures_dir>/SCORECARD.md`` (atomically) and return its path."""
    figures_dir = Path(figures_dir)
    figures_dir.mkdir(parents=True, exist_ok=True)
    entries = collect(figures_dir) if entries is None else entries
    target = figures_dir / "SCORECARD.md"
    tmp = target.with_suffix(".md.tmp")
    tmp.write_text(render(entries, figures_dir))
    tmp.replace(target)
    return target
