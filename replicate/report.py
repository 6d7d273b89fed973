"""figures/index.html: one static page with every figure, its caption, claims and verdicts.

    python -m replicate report               # <out>/figures/index.html (rule `scorecard`)

The page is built from the same list as the scorecard (:func:`replicate.scorecard.collect`):
every ``<figures>/<paper>/<figure>.json``, captioned with the figure config's ``title`` and
``regime``. It is self-contained: inline CSS, no script, no font or stylesheet from a network;
the only other files it refers to are the figures' own png (``<img src>`` relative to the page),
executed notebooks, pdf, json and configs (relative links). So it opens from a ``file://`` URL,
offline, in the folder it was written to (or a copy of the repository).
"""

from __future__ import annotations

import html
import re
from pathlib import Path

from replicate import scorecard as S
from replicate.claims import VERDICTS

LABEL = {"replicated": "replicated", "partial": "partial", "undecided": "undecided",
         "not_replicated": "not replicated", "inconclusive": "inconclusive"}

CSS = """
:root { --fg:#1f2328; --muted:#59636e; --line:#d1d9e0; --bg:#ffffff; --card:#f6f8fa;
  --rep:#1a7f37; --par:#9a6700; --und:#0969da; --not:#cf222e; --inc:#6e7781; --stale:#bc4c00; }
* { box-sizing: border-box; }
body { margin: 0; font: 15px/1.5 -apple-system, "Segoe UI", "Noto Sans", Helvetica, Arial, sans-serif;
  color: var(--fg); background: var(--bg); }
header, main, footer { max-width: 1180px; margin: 0 auto; padding: 0 24px; }
header { padding-top: 28px; }
h1 { font-size: 28px; margin: 0 0 4px; }
h2 { font-size: 22px; margin: 40px 0 12px; padding-bottom: 6px; border-bottom: 1px solid var(--line); }
h3 { font-size: 18px; margin: 0 0 4px; }
a { color: #0969da; text-decoration: none; } a:hover { text-decoration: underline; }
code { font: 13px ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; background: #eff2f5;
  padding: 1px 4px; border-radius: 4px; }
.lede { color: var(--muted); max-width: 900px; margin: 6px 0 16px; }
.totals { display: flex; flex-wrap: wrap; gap: 10px; margin: 12px 0 18px; }
.total { border: 1px solid var(--line); border-radius: 8px; padding: 8px 14px; min-width: 120px; background: var(--card); }
.total b { display: block; font-size: 24px; line-height: 1.1; }
.total.v-replicated b { color: var(--rep); } .total.v-partial b { color: var(--par); }
.total.v-undecided b { color: var(--und); } .total.v-not_replicated b { color: var(--not); } .total.v-inconclusive b { color: var(--inc); }
.total.stale b { color: var(--stale); }
table { border-collapse: collapse; width: 100%; font-size: 14px; }
th, td { border-bottom: 1px solid var(--line); padding: 6px 8px; text-align: left; vertical-align: top; }
th { background: var(--card); font-weight: 600; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
table.summary { width: auto; min-width: 640px; }
.badge { display: inline-block; padding: 1px 9px; border-radius: 999px; font-size: 12.5px; font-weight: 600;
  color: #fff; white-space: nowrap; }
.badge.v-replicated { background: var(--rep); } .badge.v-partial { background: var(--par); }
.badge.v-undecided { background: var(--und); } .badge.v-not_replicated { background: var(--not); } .badge.v-inconclusive { background: var(--inc); }
.badge.stale { background: #fff; color: var(--stale); border: 1px solid var(--stale); }
.dots { margin-left: 6px; letter-spacing: 1px; }
.dot { display: inline-block; width: 9px; height: 9px; border-radius: 50%; }
.dot.v-replicated { background: var(--rep); } .dot.v-partial { background: var(--par); }
.dot.v-undecided { background: var(--und); } .dot.v-not_replicated { background: var(--not); } .dot.v-inconclusive { background: var(--inc); }
nav.side { position: fixed; top: 0; left: 0; width: 250px; height: 100vh; overflow-y: auto;
  padding: 20px 14px; border-right: 1px solid var(--line); background: var(--card); font-size: 13.5px; }
nav.side h4 { margin: 14px 0 4px; font-size: 13.5px; } nav.side h4 a.arxiv { font-weight: 400; margin-left: 6px; }
nav.side ul { margin: 0; padding-left: 14px; list-style: none; } nav.side li { margin: 2px 0; }
@media (min-width: 1200px) { header, main, footer { margin-left: 270px; } }
@media (max-width: 1199px) { nav.side { position: static; width: auto; height: auto; border-right: 0; } }
.prov-note { border-left: 4px solid var(--inc); background: #f3f4f6; padding: 8px 12px; margin: 8px 0 12px;
  font-size: 14px; }
article.figure { border: 1px solid var(--line); border-radius: 10px; padding: 18px 20px; margin: 18px 0;
  background: #fff; box-shadow: 0 1px 2px rgba(31,35,40,.06); }
.meta { color: var(--muted); font-size: 13.5px; margin: 0 0 10px; }
.meta a { margin-right: 10px; }
.stale-note { border-left: 4px solid var(--stale); background: #fff1e5; padding: 8px 12px; margin: 8px 0 12px;
  font-size: 14px; }
figure { margin: 0 0 14px; }
figure img { display: block; max-width: 100%; height: auto; margin: 6px auto 8px; border-radius: 4px; }
figcaption { color: var(--fg); font-size: 14px; background: var(--card); border-radius: 6px; padding: 8px 12px; }
figcaption p { margin: 0; }
.missing { color: var(--not); font-weight: 600; padding: 24px; text-align: center; border: 1px dashed var(--not); }
td.measured { font-weight: 600; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.rule { color: var(--muted); font-size: 13px; }
tr.control td { background: #fbfcfd; font-size: 13.5px; } tr.control td:first-child { padding-left: 26px; }
h2 a.notes { font-size: 14px; font-weight: 400; margin-left: 10px; }
.reason { color: var(--muted); font-size: 12.5px; margin-top: 3px; }
table.sanity { margin-top: 10px; font-size: 13px; }
footer { color: var(--muted); font-size: 13px; padding-top: 24px; padding-bottom: 40px; }
"""


def _e(text) -> str:
    return html.escape(str(text), quote=True)


def _inline(text: str) -> str:
    """Escaped text with `code` spans (the figure configs' regime text uses backticks)."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", _e(text))


def _badge(verdict: str) -> str:
    return f'<span class="badge v-{verdict}">{LABEL[verdict]}</span>'


def _anchor(e: S.Entry) -> str:
    return f"{e.paper}-{e.name}"


def render(entries: list[S.Entry], page_dir: Path) -> str:
    page_dir = Path(page_dir)
    total = S.counts(entries)
    n_claims = sum(total[v] for v in VERDICTS)
    grouped = S.papers(entries)
    out = ["<!doctype html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
           '<meta name="viewport" content="width=device-width, initial-scale=1">',
           "<title>replicate — results</title>",
           "<!-- Generated by `python -m replicate report` (rule `scorecard` of `snakemake all`) "
           "from figures/<paper>/<figure>.json. Do not edit: regenerate. -->",
           f"<style>{CSS}</style>", "</head>", f'<body data-claims="{n_claims}" data-figures="{len(entries)}">',
           "<header>", "<h1>replicate — results</h1>",
           '<p class="lede">Every figure of the suite, the paper claims it checks, our number and the '
           "verdict. Each verdict was computed by the figure's notebook from the measured number and "
           "the rule in the figure's config, and re-derived from those two when this page was built; "
           "none is typed. A claim is judged at the scale its figure was run at (<code>smoke</code>: "
           "seconds, numbers mean nothing; <code>default</code>: a laptop; <code>full</code>: one "
           "GPU). <b>Stale</b> marks a figure whose paper code, notebook or config changed after it "
           'was made. The same table as Markdown: <a href="SCORECARD.md">SCORECARD.md</a>.</p>',
           f'<div class="totals" id="totals"><div class="total"><b>{n_claims}</b>paper claims in '
           f"{len(entries)} figures</div>"]
    out += [f'<div class="total v-{v}"><b>{total[v]}</b>{LABEL[v]}</div>' for v in VERDICTS]
    out += [f'<div class="total stale"><b>{total["stale"]}</b>stale</div>',
            f'<div class="total"><b>{total["control"]}</b>controls (not counted)</div>',
            f'<div class="total"><b>{total["sanity"]}</b>sanity checks (not counted)</div>', "</div>"]
    if not entries:
        out += ['<p class="missing">No figures yet: run <code>snakemake all --cores all</code>.</p>']
    else:
        out += ['<table class="summary"><thead><tr><th>paper</th><th class="num">figures</th>'
                '<th class="num">claims</th>'
                + "".join(f'<th class="num">{_badge(v)}</th>' for v in VERDICTS)
                + '<th class="num"><span class="badge stale">stale</span></th></tr></thead><tbody>']
        for paper, group in grouped.items():
            c = S.counts(group)
            out.append(f'<tr><td><a href="#paper-{_e(paper)}">{_e(paper)}</a></td>'
                       f'<td class="num">{len(group)}</td><td class="num">{sum(c[v] for v in VERDICTS)}</td>'
                       + "".join(f'<td class="num">{c[v]}</td>' for v in VERDICTS)
                       + f'<td class="num">{c["stale"]}</td></tr>')
        out.append("</tbody></table>")
    out.append("</header>")
    out.append(_navigation(grouped))
    out.append("<main>")
    for paper, group in grouped.items():
        notes = S.notes_path(paper)
        link = (f' <a class="notes" href="{_e(S.relative_link(notes, page_dir))}">research notes</a>'
                if notes is not None else "")
        arxiv = "".join(f" {a}" for a in _arxiv_anchors(S.paper_links(group), 'class="notes" '))
        out.append(f'<section class="paper" id="paper-{_e(paper)}"><h2>{_e(paper)}{arxiv}{link}</h2>')
        out += [_figure(e, page_dir) for e in group]
        out.append("</section>")
    out += ["</main>",
            "<footer>Built by <code>python -m replicate report</code> from the claims json of each "
            "figure. Rerun everything with <code>snakemake all --cores all</code>; one figure with "
            "<code>snakemake figures/&lt;paper&gt;/&lt;figure&gt;.png --cores all</code>.</footer>",
            "</body>", "</html>", ""]
    return "\n".join(out)


def _arxiv_anchors(links: list[str], attributes: str = "") -> list[str]:
    """``<a href="https://arxiv.org/abs/<id>">arXiv <id></a>`` for each link."""
    return [f'<a {attributes}href="{_e(u)}">arXiv {_e(u.rsplit("/", 1)[-1])}</a>' for u in links]


def _navigation(grouped: dict[str, list[S.Entry]]) -> str:
    """The side bar: each paper (with its arXiv link), its figures and one dot per paper claim."""
    out = ['<nav class="side" aria-label="papers and figures"><a href="#totals"><b>replicate</b></a>']
    for paper, group in grouped.items():
        arxiv = "".join(f'<a class="arxiv" href="{_e(u)}">arXiv</a>' for u in S.paper_links(group)[:1])
        out.append(f'<h4><a href="#paper-{_e(paper)}">{_e(paper)}</a>{arxiv}</h4><ul>')
        for e in group:
            dots = "".join(f'<span class="dot v-{c["verdict"]}" title="{_e(c.get("id", ""))}: '
                           f'{LABEL[c["verdict"]]}"></span>' for c in S.kind_claims(e))
            out.append(f'<li><a href="#{_e(_anchor(e))}">{_e(e.name)}</a>'
                       f'<span class="dots">{dots}</span>{" ⚠" if e.stale else ""}</li>')
        out.append("</ul>")
    out.append("</nav>")
    return "\n".join(out)


def _figure(e: S.Entry, page_dir: Path) -> str:
    r = e.record
    link = lambda suffix: S.relative_link(e.output(suffix), page_dir)  # noqa: E731
    links = [f'<a href="{_e(link(".html"))}">page (no code)</a>',
             f'<a href="{_e(link(".ipynb"))}">executed notebook</a>']
    if e.config_path is not None:
        links.append(f'<a href="{_e(S.relative_link(e.config_path, page_dir))}">config</a>')
    links += [f'<a href="{_e(link(".pdf"))}">pdf</a>', f'<a href="{_e(link(".json"))}">claims json</a>']
    wall = r.get("wall_seconds")
    facts = [f"<code>{_e(e.key)}</code>", f"scale <b>{_e(r.get('scale', '?'))}</b>",
             f"hardware <b>{_e(r.get('hardware', '?'))}</b>", f"commit <code>{_e(S.short_commit(r))}</code>",
             f"run {_e(str(r.get('started', '?'))[:16].replace('T', ' '))}"]
    if isinstance(wall, (int, float)):
        facts.append(f"{wall:.0f} s")
    source = r.get("source") or {}
    paper = ", ".join(_arxiv_anchors(source.get("links", [])))
    parts = [f'<article class="figure" id="{_e(_anchor(e))}">',
             f"<h3>{_e(e.title or e.name)}</h3>",
             f'<p class="meta">{" · ".join(facts)}<br>Paper: {paper or "—"}'
             f'{", " + _e(source["where"]) if source.get("where") else ""}<br>{" ".join(links)}</p>']
    if e.provenance:
        parts.append('<div class="prov-note"><b>Provenance:</b> ' + "; ".join(_e(p) for p in e.provenance) + "</div>")
    if e.stale:
        parts.append('<div class="stale-note"><span class="badge stale">stale</span> '
                     + "; ".join(_e(reason) for reason in e.stale) + "</div>")
    png = e.output(".png")
    if png.is_file():
        img = (f'<a href="{_e(link(".png"))}"><img src="{_e(link(".png"))}" '
               f'alt="{_e(e.key)}: {_e(e.title or e.name)}"></a>')
    else:
        img = f'<div class="missing">figure missing: {_e(link(".png"))}</div>'
    caption = "".join(f"<p>{_inline(p)}</p>" for p in e.regime.split("\n\n") if p.strip())
    parts.append(f"<figure>{img}" + (f"<figcaption>{caption}</figcaption>" if caption else "") + "</figure>")
    parts.append('<table class="claims"><thead><tr><th>claim</th><th>paper</th><th>measured</th>'
                 "<th>interval (n)</th><th>rule</th><th>verdict</th></tr></thead><tbody>")
    stale = ' <span class="badge stale">stale</span>' if e.stale else ""
    for c, control in S.ordered_claims(e):
        label, row_class = ("control ", ' class="control"') if control else ("", "")
        parts.append(f'<tr id="{_e(_anchor(e))}-{_e(c.get("id", ""))}"{row_class}>'
                     f'<td>{"↳ " if control else ""}<code>{_e(c.get("id", ""))}</code> {label}'
                     f'{_e(c.get("statement", ""))}</td><td>{_e(c.get("paper_value", ""))}</td>'
                     f'<td class="measured">{_e(S.fmt(c.get("measured")))}</td>'
                     f'<td class="measured">{_e(S.interval_text(c))}</td>'
                     f'<td class="rule">{_e(c.get("criterion", ""))}</td>'
                     f'<td>{_badge(c["verdict"])}{stale}<div class="reason">{_e(c.get("reason", ""))}</div></td></tr>')
    parts.append("</tbody></table>")
    sanity = S.kind_claims(e, "sanity")
    if sanity:
        parts.append('<table class="claims sanity"><thead><tr><th>sanity check (not counted)</th>'
                     "<th>measured</th><th>rule</th><th>result</th></tr></thead><tbody>")
        parts += [f'<tr><td><code>{_e(c.get("id", ""))}</code> {_e(c.get("statement", ""))}</td>'
                  f'<td class="measured">{_e(S.fmt(c.get("measured")))}</td>'
                  f'<td class="rule">{_e(c.get("criterion", ""))}</td>'
                  f'<td>{"holds" if c["verdict"] == "replicated" else _e(c["verdict"])}</td></tr>' for c in sanity]
        parts.append("</tbody></table>")
    parts.append("</article>")

    return "\n".join(parts)


def write(figures_dir: str | Path, entries: list[S.Entry] | None = None) -> Path:
    """Write ``<figures_dir>/index.html`` (atomically) and return its path."""
    figures_dir = Path(figures_dir)
    figures_dir.mkdir(parents=True, exist_ok=True)
    entries = S.collect(figures_dir) if entries is None else entries
    target = figures_dir / "index.html"
    tmp = target.with_suffix(".html.tmp")
    tmp.write_text(render(entries, figures_dir), encoding="utf-8")
    tmp.replace(target)
    return target
