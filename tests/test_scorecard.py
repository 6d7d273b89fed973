"""figures/SCORECARD.md: totals count paper claims only, every claim is shown (controls under the
claim they qualify, sanity checks apart), verdicts are re-derived from the json's numbers and the
config's rules (a hand-edited verdict or rule is refused), and a figure older than its code,
notebook or config is stale."""

import json
import os
import re
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from replicate import claims as claims_lib
from replicate import config as C
from replicate import integrity
from replicate import runs
from replicate import scorecard as S
from replicate.cli import main
from replicate.claims import VERDICTS

SPECS = [  # paper claims that reach every verdict, a control and a sanity check (never counted)
    {"id": "big_cut", "kind": "paper", "statement": "cuts the sink at least 3x | a pipe",
     "paper_value": "6.4x (Table 4)", "measured": "cut", "replicated": ">= 3", "partial": ">= 1.5"},
    {"id": "small_gain", "kind": "paper", "statement": "lowers the loss", "paper_value": "-0.045 nats",
     "measured": "gain", "replicated": ">= 0.01", "partial": "> 0"},
    {"id": "sparse", "kind": "paper", "statement": "gate scores are sparse", "paper_value": "mean 0.116",
     "measured": "gate", "replicated": "< 0.25"},
    {"id": "never_measured", "kind": "paper", "statement": "a claim the notebook did not measure",
     "paper_value": "1", "measured": "absent", "replicated": "> 0"},
    {"id": "fixed_gate", "kind": "control", "qualifies": "small_gain", "statement": "a fixed gate gains too",
     "paper_value": "not in the paper", "measured": "gain", "replicated": "> 0"},
    {"id": "identity", "kind": "sanity", "statement": "the gate is 1 at init", "paper_value": "by construction",
     "measured": "cut", "replicated": "> 0"},
]
N_PAPER = 4


def write_figure(figures: Path, paper: str, figure: str, measurements: dict, specs=None, **extra) -> Path:
    """A claims json as FigureContext.report writes it; verdicts computed by replicate.claims.
    By default :data:`SPECS`, each paper number quoted as this figure's own (counted once)."""
    specs = specs or [dict(s, paper_value=f"{s['paper_value']} [{figure}]") for s in SPECS]
    record = {"claim_contract": claims_lib.CLAIM_CONTRACT, "paper": paper, "figure": figure,
              "scale": "smoke", "hardware": "cpu",
              "git_commit": "0123456789abcdef", "started": "2026-01-02T03:04:05+00:00",
              "wall_seconds": 12.5, "config_sha256": "", "measurements": measurements,
              "claims": [c.to_dict() for c in claims_lib.evaluate(specs, measurements)], **extra}
    record["digest"] = integrity.digest(record)
    path = figures / paper / f"{figure}.json"
    runs.write_json_atomic(path, record)
    for suffix in (".png", ".pdf", ".ipynb", ".html"):
        path.with_suffix(suffix).write_bytes(b"x")
    return path


def forge_digest(path: Path, record: dict) -> None:
    """Write an edited record with its digest recomputed, as a careful forger would: the checks
    behind the digest (numbers against units, verdicts against rules) must still refuse it."""
    record["digest"] = integrity.digest(record)
    path.write_text(json.dumps(record))


def fake_repo(root: Path, figures: list[tuple[str, str]]) -> None:
    """Paper code, notebook and config files of each figure, dated an hour ago."""
    old = time.time() - 3600
    for paper, figure in figures:
        for rel in (f"replicate/papers/{paper}/module.py", f"notebooks/{paper}/{figure}.ipynb",
                    f"configs/figure/{paper}/{figure}.yaml"):
            path = root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("# " + rel)
            os.utime(path, (old, old))


@pytest.fixture
def repo(tmp_path):
    """A fake checkout (not a git repo: files are dated by mtime) with three figures' jsons."""
    figs = [("alpha", "one"), ("alpha", "two"), ("beta", "three")]
    fake_repo(tmp_path, figs)
    figures = tmp_path / "figures"
    nan = float("nan")
    write_figure(figures, "alpha", "one", {"cut": 4.0, "gain": 0.02, "gate": 0.1, "absent": nan})  # replicated x3
    write_figure(figures, "alpha", "two", {"cut": 2.0, "gain": -1.0, "gate": nan, "absent": nan})
    undecided = claims_lib.mean_interval([-0.02, 0.01, 0.05])  # reaches 0.01 and falls below 0
    write_figure(figures, "beta", "three", {"cut": 1.0, "gain": undecided, "gate": 0.5, "absent": 1.0})
    return tmp_path


def parse_rows(text: str) -> list[list[str]]:
    """Claim rows of the per-paper tables: cells of lines that carry a verdict badge."""
    rows = []
    for line in text.splitlines():
        if line.startswith("| [") and any(S.BADGE[v] in line for v in VERDICTS) and "](#" not in line:
            rows.append([c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]])
    return rows


def verdict_of(cell: str) -> str:
    return next(v for v in VERDICTS if S.BADGE[v] in cell)


def paper_claims(figures: Path) -> list[dict]:
    return [c for p in figures.glob("*/*.json") for c in json.loads(p.read_text())["claims"]
            if c["kind"] == "paper"]


def test_totals_count_paper_claims_only(repo):
    text = S.render(S.collect(repo / "figures", root=repo, compose=False), repo / "figures")
    claims = paper_claims(repo / "figures")
    assert len(claims) == 3 * N_PAPER
    expected = Counter(c["verdict"] for c in claims)
    assert set(expected) == set(VERDICTS)  # the fixture exercises every verdict
    assert f"**{len(claims)} claims**: " + ", ".join(f"{expected[v]} {v.replace('_', ' ')}" for v in VERDICTS) in text
    assert "Not counted: 3 controls" in text and "3 sanity checks" in text
    rows = parse_rows(text)  # paper claims and, indented under them, the controls
    assert len(rows) == 3 * (N_PAPER + 1)
    assert Counter(verdict_of(r[7]) for r in rows if "control" not in r[1]) == expected
    for i, r in enumerate(rows):  # each control follows the claim it qualifies
        if "↳ control: `fixed_gate`" in r[1]:
            assert "`small_gain`" in rows[i - 1][1]
    assert text.count("`identity` the gate is 1 at init") == 3  # in the sanity tables
    assert "🔵 undecided" in text and "±" in text  # the undecided claim shows its MDE
    all_row = next(line for line in text.splitlines() if line.startswith("| **all** |"))
    assert [int(x.strip("* ")) for x in all_row.split("|")[2:-1]] == [
        3, len(claims), *(expected[v] for v in VERDICTS), 0, 3, 3]


def test_every_claim_row_has_its_numbers_provenance_and_links(repo):
    figures = repo / "figures"
    entries = S.collect(figures, root=repo, compose=False)
    rows = parse_rows(S.render(entries, figures))
    for entry in entries:
        shown = [c for c, _ in S.ordered_claims(entry)]
        for claim, row in zip(shown, [r for r in rows if f"[{entry.name}](" in r[0]]):
            assert claim["id"] in row[1] and claim["statement"].replace("|", "\\|") in row[1]
            assert row[2] == claim["paper_value"] and row[3] == S.fmt(claim["measured"])
            assert row[4] == S.interval_text(claim).replace("|", "\\|")
            assert row[5] == S.power_text(claim) and row[6] == claim["criterion"]
            assert verdict_of(row[7]) == claim["verdict"] and row[8] == claim["reason"]
            links = re.findall(r"\]\(([^)]+)\)", row[0])
            assert [Path(link).suffix for link in links] == [".png", ".html", ".ipynb"]
            assert all((figures / link).is_file() for link in links)


def test_a_hand_edited_verdict_is_refused_with_the_file_and_claim_named(repo, capsys):
    path = repo / "figures" / "beta" / "three.json"
    record = json.loads(path.read_text())
    record["claims"][0]["verdict"] = "replicated"  # measured 1.0 under ">= 3" is not_replicated
    forge_digest(path, record)
    with pytest.raises(S.ScorecardError, match=r"three.json: claim 'big_cut' says 'replicated' but .* gives 'not_replicated'"):
        S.collect(repo / "figures", root=repo, compose=False)
    assert main(["scorecard", f"out={repo}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "big_cut" in err[0]
    assert not (repo / "figures" / "SCORECARD.md").exists()


def test_an_edited_interval_is_refused(repo):
    path = repo / "figures" / "alpha" / "one.json"
    record = json.loads(path.read_text())
    record["claims"][1]["interval"] = [-0.01, 0.05]  # gain 0.02 was judged without an interval
    forge_digest(path, record)
    with pytest.raises(S.ScorecardError, match=r"one.json: claim 'small_gain': interval \[-0.01, 0.05\] is not its measurement"):
        S.collect(repo / "figures", root=repo, compose=False)


@pytest.mark.parametrize("forge,message", [
    (lambda r: r["claims"][1].update(measured=0.04), "claim 'small_gain': measured 0.04 is not its measurement 'gain'"),
    (lambda r: r["claims"][1]["units"].__setitem__(0, 99.0), "claim 'small_gain': its units are not its measurement 'gain''s"),
    (lambda r: r["measurements"]["gain"]["units"].__setitem__(0, 99.0), "measurement 'gain': value .* but its units give"),
    (lambda r: r["measurements"]["gain"].update(interval=[0.0, 0.03]), "measurement 'gain': interval .* but its units give"),
    (lambda r: r["measurements"]["gain"]["estimator"].update(name="magic"), "measurement .gain.: cannot recompute its interval"),
])
def test_a_forged_number_is_refused_with_the_file_and_field_named(repo, forge, message):
    path = repo / "figures" / "beta" / "three.json"
    record = json.loads(path.read_text())
    forge(record)
    forge_digest(path, record)
    with pytest.raises(S.ScorecardError, match="three.json: " + message):
        S.collect(repo / "figures", root=repo, compose=False)


def test_a_bootstrap_over_few_units_is_refused(repo):
    path = repo / "figures" / "beta" / "three.json"
    record = json.loads(path.read_text())
    record["measurements"]["gain"]["estimator"] = {"name": "bootstrap", "statistic": "numpy:mean", "params": {},
                                                   "resamples": 100, "seed": 0, "level": 0.95, "unit": "seeds"}
    forge_digest(path, record)
    with pytest.raises(S.ScorecardError, match="a percentile bootstrap over 3 units"):
        S.collect(repo / "figures", root=repo, compose=False)


def test_a_paper_number_is_counted_once(repo):
    figures = repo / "figures"
    quoted = json.loads((figures / "alpha" / "one.json").read_text())["claims"][0]["paper_value"]
    write_figure(figures, "alpha", "two", {"cut": 2.0}, specs=[dict(SPECS[0], id="same_number_again", paper_value=quoted)])
    with pytest.raises(S.ScorecardError, match="paper number counted twice: alpha/one:big_cut and alpha/two:same_number_again"):
        S.collect(figures, root=repo, compose=False)


def test_a_figure_made_under_the_earlier_contract_is_stale_not_rejudged(repo):
    path = repo / "figures" / "alpha" / "one.json"
    record = json.loads(path.read_text())
    del record["claim_contract"]
    record["claims"][0]["verdict"] = "partial"  # the old rules' verdict, shown as made
    forge_digest(path, record)
    entries = {e.key: e for e in S.collect(repo / "figures", root=repo, compose=False)}
    assert entries["alpha/one"].stale == [S.LEGACY] and not entries["alpha/two"].stale


def test_a_json_without_kinds_or_rules_is_refused(repo):
    path = repo / "figures" / "alpha" / "one.json"
    record = json.loads(path.read_text())
    del record["claims"][1]["kind"]
    forge_digest(path, record)
    with pytest.raises(S.ScorecardError, match="small_gain' has kind None"):
        S.collect(repo / "figures", root=repo, compose=False)


def test_a_non_strict_json_is_refused(repo):
    path = repo / "figures" / "alpha" / "one.json"
    path.write_text(path.read_text().replace('"measured": 0.1', '"measured": NaN', 1))
    with pytest.raises(S.ScorecardError, match="one.json: not strict JSON"):
        S.collect(repo / "figures", root=repo, compose=False)


@pytest.mark.parametrize("changed,kind", [
    ("replicate/papers/alpha/module.py", "paper code"),
    ("notebooks/alpha/one.ipynb", "notebook"),
    ("configs/figure/alpha/one.yaml", "figure config"),
])
def test_a_figure_older_than_its_code_notebook_or_config_is_stale_by_mtime(repo, changed, kind):
    assert not any(e.stale for e in S.collect(repo / "figures", root=repo, compose=False))
    (repo / changed).write_text("# edited after the figure was made")
    entries = {e.key: e for e in S.collect(repo / "figures", root=repo, compose=False)}
    assert kind in entries["alpha/one"].stale[0] and changed in entries["alpha/one"].stale[0]
    assert entries["beta/three"].stale == []
    assert bool(entries["alpha/two"].stale) == (kind == "paper code")  # the code is the paper's
    text = S.render(list(entries.values()), repo / "figures")
    stale_rows = sum(len(S.ordered_claims(e)) for e in entries.values() if e.stale)
    stale_claims = sum(len(S.kind_claims(e)) for e in entries.values() if e.stale)
    assert text.count(S.STALE) == stale_rows + 2  # each stale claim row, the header and the footnote
    assert f"; {stale_claims} stale" in text and changed in text


def git(root: Path, *args: str, when: int | None = None) -> None:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}
    if when is not None:
        env["GIT_AUTHOR_DATE"] = env["GIT_COMMITTER_DATE"] = f"@{when} +0000"
    subprocess.run(["git", "-C", str(root), *args], check=True, capture_output=True, env=env)


def test_in_a_git_checkout_committed_files_are_dated_by_their_last_commit(repo):
    stale = lambda: {e.key: bool(e.stale) for e in S.collect(repo / "figures", root=repo, compose=False)}  # noqa: E731
    t0 = int(time.time()) - 86400
    git(repo, "init", "-q")
    git(repo, "add", ".")
    git(repo, "commit", "-qm", "code and figures together", when=t0)
    # a fresh clone dates files by checkout time: make the json look older than the code on disk
    json_path, code = repo / "figures" / "alpha" / "one.json", repo / "replicate" / "papers" / "alpha" / "module.py"
    os.utime(json_path, (t0 - 500, t0 - 500))
    os.utime(code, (time.time(), time.time()))
    assert not any(stale().values())  # committed together: same version time
    code.write_text("# an uncommitted edit")  # dirty: dated by mtime, newer than the json's commit
    assert stale()["alpha/one"] and stale()["alpha/two"] and not stale()["beta/three"]
    git(repo, "commit", "-qam", "change alpha's code", when=t0 + 100)  # committed later: still stale
    assert stale()["alpha/one"] and not stale()["beta/three"]
    json_path.write_text(json_path.read_text() + "\n")  # the figure remade and committed after it
    git(repo, "commit", "-qam", "rerun alpha/one", when=t0 + 200)
    assert not stale()["alpha/one"] and stale()["alpha/two"]


def test_the_figure_config_is_judged_by_its_hash_and_gives_the_caption(tmp_path):
    figure = "gated_attention/loss"
    cfg = C.compose(figure, hardware="cpu", scale="smoke")
    specs = OmegaConf.to_container(cfg.figure.claims)
    figures = tmp_path / "figures"
    measurements = {k: 0.0 for s in specs for k in [s["measured"], *(s.get("requires") or {})]}
    write_figure(figures, "gated_attention", "loss", measurements, specs=specs,
                 config_sha256=C.config_sha256(cfg))
    (entry,) = S.collect(figures)
    assert entry.stale == [] and entry.title == cfg.figure.title and entry.regime == cfg.figure.regime.strip()
    assert entry.config_path == C.REPO_ROOT / "configs" / "figure" / "gated_attention" / "loss.yaml"
    assert f"[config]({S.relative_link(entry.config_path, figures)})" in S.render([entry], figures)
    edited = [dict(s, replicated="> -1e9") if i == 0 else s for i, s in enumerate(specs)]
    write_figure(figures, "gated_attention", "loss", measurements, specs=edited,
                 config_sha256=C.config_sha256(cfg))  # a rule edited in the json, config unchanged
    with pytest.raises(S.ScorecardError, match="rules or kind differ from its config's"):
        S.collect(figures)
    write_figure(figures, "gated_attention", "loss", measurements, specs=edited, config_sha256="0" * 64)
    (entry,) = S.collect(figures)  # config changed since: stale, checked against its own rules
    assert len(entry.stale) == 1 and "figure config changed" in entry.stale[0]
    write_figure(figures, "gated_attention", "gone", measurements,
                 specs=[dict(s, paper_value=f"{s['paper_value']} (gone)") for s in specs])
    gone = {e.key: e for e in S.collect(figures)}["gated_attention/gone"]
    assert "no longer exists" in gone.stale[0]


def test_no_figures_yet_is_a_scorecard_that_says_so(tmp_path):
    path = S.write(tmp_path / "figures")
    text = path.read_text()
    assert "**0 claims**" in text and "No figures yet" in text


def test_the_shipped_scorecard_counts_equal_the_shipped_jsons():
    figures = C.REPO_ROOT / "figures"
    jsons = sorted(figures.glob("*/*.json"))
    if not jsons:
        pytest.skip("no shipped figures yet (figures/*/*.json)")
    claims = paper_claims(figures)
    expected = Counter(c["verdict"] for c in claims)
    assert (figures / "SCORECARD.md").is_file(), "figures/ ships jsons but no SCORECARD.md: python -m replicate scorecard"
    text = (figures / "SCORECARD.md").read_text()
    assert f"**{len(claims)} claims**: " + ", ".join(f"{expected[v]} {v.replace('_', ' ')}" for v in VERDICTS) in text
    assert Counter(verdict_of(r[7]) for r in parse_rows(text) if "control" not in r[1]) == expected
    for p in jsons:  # strict JSON, and every verdict of the current contract follows from its numbers
        record = S._read_strict(p)
        if record.get("claim_contract") == claims_lib.CLAIM_CONTRACT:
            S.check_measurements(record, p)
            S.check_verdicts(record, p)


def test_provenance_commit_is_dirty_for_sources_not_for_figure_outputs(tmp_path, monkeypatch):
    from replicate import notebook

    (tmp_path / "figures").mkdir()
    (tmp_path / "figures" / "a.json").write_text("{}")
    (tmp_path / "module.py").write_text("x = 1\n")
    git(tmp_path, "init", "-q")
    git(tmp_path, "add", ".")
    git(tmp_path, "commit", "-qm", "init")
    monkeypatch.setattr(C, "REPO_ROOT", tmp_path)
    clean = notebook.git_commit()
    assert len(clean) == 40 and not clean.endswith("-dirty")
    (tmp_path / "figures" / "a.json").write_text('{"rewritten": true}')  # the pipeline's own output
    assert notebook.git_commit() == clean
    (tmp_path / "module.py").write_text("x = 2\n")  # a source edit
    assert notebook.git_commit() == clean + "-dirty"


def test_the_answer_links_the_papers_research_notes(tmp_path):
    record = {"paper": "gated_attention", "figure": "loss", "scale": "smoke", "hardware": "cpu",
              "git_commit": "0" * 40, "claims": [c.to_dict() for c in claims_lib.evaluate(
                  SPECS, {"cut": 4.0, "gain": float("nan"), "gate": float("nan"), "absent": float("nan")})]}
    figures = C.REPO_ROOT / "figures" / "gated_attention"
    text = S.answer_markdown(record, figures)
    assert "(../../docs/papers/gated_attention.md)" in text
    assert "**4 paper claims**: 1 replicated, 3 inconclusive" in text
    assert "↳ control `fixed_gate`" in text and "not counted): 1 of 1 hold." in text
    assert "docs/papers" not in S.answer_markdown({**record, "paper": "no_such_paper"}, figures)
    assert "![loss](loss.png)" in text  # the figure right under the totals
    assert "●</span> replicated" in text and "✅" not in text  # badges need no emoji font


def test_sweep_values_read_as_prose():
    from replicate.notebook import sweep_values

    assert sweep_values([0.001, 0.004, 0.016]) == "{0.001, 0.004, 0.016}"
    assert sweep_values([{"name": "template", "w1": [1, 2]}, {"name": "generic_jump"}]) == "{template, generic_jump}"
    assert sweep_values([{"w1": 1}, {"w1": 2}]) == "2 settings"
    assert sweep_values(list(range(12))) == "{0, 1, 2, …, 10, 11} (12 values)"


def test_an_edit_without_a_new_digest_is_refused_naming_the_field(repo):
    path = repo / "figures" / "alpha" / "one.json"
    record = json.loads(path.read_text())
    record["measurements"]["cut"] = 40.0
    path.write_text(json.dumps(record))
    with pytest.raises(integrity.IntegrityError, match="one.json: field 'measurements' differs"):
        S.collect(repo / "figures", root=repo, compose=False)


def test_a_consistent_forgery_of_a_committed_json_is_flagged_under_provenance(repo):
    """A forger who edits a number, its units, interval, verdict and digest consistently passes
    every arithmetic check; the json then differs from git HEAD, which the scorecard says."""
    git(repo, "init", "-q")
    git(repo, "add", ".")
    git(repo, "commit", "-qm", "figures")
    path = repo / "figures" / "beta" / "three.json"
    record = json.loads(path.read_text())
    forged = {"cut": 1.0, "gain": claims_lib.mean_interval([0.04, 0.05, 0.06]), "gate": 0.5, "absent": 1.0}
    specs = [dict(s, paper_value=f"{s['paper_value']} [three]") for s in SPECS]
    record["measurements"] = json.loads(json.dumps(runs.strict(forged)))
    record["claims"] = [c.to_dict() for c in claims_lib.evaluate(specs, forged)]
    forge_digest(path, record)
    entries = {e.key: e for e in S.collect(repo / "figures", root=repo, compose=False)}
    assert any("differs from the committed copy" in w for w in entries["beta/three"].provenance)
    assert not any("differs" in w for w in entries["alpha/one"].provenance)
