"""figures/index.html: one self-contained page with every figure, caption, claim and verdict,
opened from file:// in a real headless browser (Debian chromium) with the network switched off."""

import json
import re
import shutil
import struct
import subprocess
import zlib
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from replicate import claims as claims_lib
from replicate import integrity
from replicate import runs
from replicate import config as C
from replicate import report, scorecard as S
from replicate.claims import VERDICTS

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars", "--host-resolver-rules=MAP * ~NOTFOUND"]  # offline: no host resolves
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="no headless browser: install Debian chromium (apt-get install -y chromium); "
                             ".ci/run installs it")
FIGURES = [f for f in C.list_figures() if f.startswith("gated_attention/")][:3]


def png(width: int, height: int, rgb: tuple[int, int, int]) -> bytes:
    """A real PNG: a coloured band on white (so a broken image and a blank one differ)."""
    row = bytearray()
    for x in range(width):
        row += bytes(rgb) if width // 4 < x < 3 * width // 4 else b"\xff\xff\xff"
    raw = b"".join(b"\x00" + bytes(row) for _ in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """A figures folder as the pipeline leaves it: png + notebook + pdf + claims json per figure
    (real figure configs composed at smoke scale, verdicts computed by replicate.claims), the last
    figure stale (its json's config hash is not its config's); then the report and scorecard."""
    assert FIGURES, "the worked example's figures (configs/figure/gated_attention) are missing"
    figures = tmp_path_factory.mktemp("out") / "figures"
    colours = [(0, 114, 178), (213, 94, 0), (0, 158, 115)]
    for i, figure in enumerate(FIGURES):
        paper, name = figure.split("/")
        cfg = C.compose(figure, hardware="cpu", scale="smoke")
        specs = OmegaConf.to_container(cfg.figure.claims)
        values = [5.0, 0.0, -1.0, float("nan")]  # a spread of numbers -> a spread of verdicts
        measurements = {k: 1.0 for s in specs for k in (s.get("requires") or {})}  # preconditions hold
        measurements.update({s["measured"]: values[(i + j) % len(values)] for j, s in enumerate(specs)})
        record = {"claim_contract": claims_lib.CLAIM_CONTRACT, "paper": paper, "figure": name, "scale": "smoke", "hardware": "cpu",
                  "git_commit": "abcdef0123456789", "started": "2026-01-02T03:04:05+00:00",
                  "wall_seconds": 42.0,
                  "source": {"arxiv": "2505.06708", "where": "Table 1",
                             "links": ["https://arxiv.org/abs/2505.06708"]},
                  "config_sha256": C.config_sha256(cfg) if i < len(FIGURES) - 1 else "f" * 64,
                  "measurements": measurements,
                  "claims": [c.to_dict() for c in claims_lib.evaluate(specs, measurements)]}
        record["digest"] = integrity.digest(record)
        runs.write_json_atomic(figures / paper / f"{name}.json", record)
        (figures / paper / f"{name}.png").write_bytes(png(640, 300, colours[i % 3]))
        for suffix in (".pdf", ".ipynb", ".html"):
            (figures / paper / f"{name}{suffix}").write_text("{}")
    entries = S.collect(figures)
    page = report.write(figures, entries)
    S.write(figures, entries)
    return figures, page, entries


def test_the_page_is_self_contained_and_every_link_resolves(site):
    figures, page, _ = site
    html = page.read_text()
    assert "<style>" in html and "<script" not in html and "<link" not in html and "@import" not in html
    refs = re.findall(r'(?:src|href)="([^"]*)"', html)
    assert not [r for r in re.findall(r'src="([^"]*)"', html) if re.match(r"[a-z]+:|//", r)], "offline"
    external = [r for r in refs if re.match(r"[a-z]+:|//", r)]
    assert external and set(external) == {"https://arxiv.org/abs/2505.06708"}  # the paper, a plain link
    refs = [r for r in refs if r not in external]
    for ref in refs:
        if ref.startswith("#"):
            assert f'id="{ref[1:]}"' in html, ref
        else:
            assert (figures / ref).resolve().is_file(), ref
    assert {Path(r).suffix for r in refs if not r.startswith("#")} >= {".png", ".html", ".ipynb", ".pdf", ".json", ".yaml", ".md"}
    assert re.findall(r'<img src="([^"]+)"', html) == [f"{f}.png" for f in FIGURES]


def test_the_side_bar_lists_every_paper_with_its_arxiv_link_and_every_figure(site):
    _, page, entries = site
    nav = re.search(r'<nav class="side".*?</nav>', page.read_text(), re.S)[0]
    for paper in {e.paper for e in entries}:
        assert f'href="#paper-{paper}"' in nav
    assert nav.count('href="https://arxiv.org/abs/2505.06708"') == len({e.paper for e in entries})
    assert all(f'href="#{e.paper}-{e.name}"' in nav for e in entries)


def test_every_figure_has_its_caption_claims_numbers_and_badges(site):
    _, page, entries = site
    html = page.read_text()
    for e in entries:
        assert f"<h3>{report._e(e.title)}</h3>" in html and e.title
        assert report._inline(e.regime.split("\n\n")[0])[:60] in html  # the regime text is the caption
        assert f'href="{S.relative_link(e.config_path, page.parent)}"' in html
        for c in e.claims:
            row = re.search(rf'<tr id="{e.paper}-{e.name}-{c["id"]}"[^>]*>(.*?)</tr>', html, re.S)
            assert row, c["id"]
            assert report._e(c["statement"]) in row[1] and report._e(c["paper_value"]) in row[1]
            assert f'<td class="measured">{report._e(S.fmt(c["measured"]))}</td>' in row[1]
            assert f'<td class="measured">{report._e(S.interval_text(c))}</td>' in row[1]
            assert report._e(c["reason"]) in row[1]
            assert report._e(c["criterion"]) in row[1] and f'class="badge v-{c["verdict"]}"' in row[1]
            assert ("badge stale" in row[1]) == bool(e.stale)


def test_the_totals_equal_the_counts_over_the_jsons(site):
    figures, page, _ = site
    html = page.read_text()
    claims = [c for p in figures.glob("*/*.json") for c in json.loads(p.read_text())["claims"]
              if c["kind"] == "paper"]  # the totals count the papers' claims only
    expected = Counter(c["verdict"] for c in claims)
    assert len(expected) >= 3
    for v in VERDICTS:
        assert f'<div class="total v-{v}"><b>{expected[v]}</b>' in html
    rows = re.findall(r'<tr id="[^"]+">.*?</tr>', html, re.S)  # paper claims (controls have a class)
    assert Counter(re.search(r'class="badge v-(\w+)"', r)[1] for r in rows) == expected
    stale = sum(c["kind"] == "paper" for p in figures.glob("*/*.json")
                if json.loads(p.read_text())["config_sha256"] == "f" * 64
                for c in json.loads(p.read_text())["claims"])
    assert stale > 0 and f'<div class="total stale"><b>{stale}</b>' in html


def chromium(*args: str, profile: Path, timeout: int = 90) -> subprocess.CompletedProcess:
    return subprocess.run([CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
                          capture_output=True, text=True, timeout=timeout)


@needs_chromium
def test_headless_chromium_renders_the_page_offline_with_every_image(site, tmp_path):
    figures, page, entries = site
    # the page has no script; a copy beside it gets one that reports, after load, how many images decoded
    probe = page.with_name("probe.html")
    probe.write_text(page.read_text().replace("</body>", (
        "<script>window.addEventListener('load', () => { const imgs = [...document.images];"
        " document.body.dataset.imagesTotal = imgs.length;"
        " document.body.dataset.imagesLoaded = imgs.filter(i => i.complete && i.naturalWidth > 0).length;"
        " const nav = [...document.querySelectorAll('nav.side a[href^=\"#\"]')];"
        " document.body.dataset.navLinks = nav.length;"
        " document.body.dataset.navResolved = nav.filter(a => document.getElementById(a.hash.slice(1))).length;"
        " document.body.dataset.navWidth = Math.round(document.querySelector('nav.side').getBoundingClientRect().width);"
        "});</script></body>")))
    dom = chromium("--virtual-time-budget=10000", "--dump-dom", probe.as_uri(), profile=tmp_path / "p1")
    assert dom.returncode == 0, dom.stderr[-2000:]
    body = re.search(r"<body[^>]*>", dom.stdout)[0]
    assert f'data-images-total="{len(entries)}"' in body and f'data-images-loaded="{len(entries)}"' in body, body
    links = 1 + len({e.paper for e in entries}) + len(entries)  # top, each paper, each figure
    assert f'data-nav-links="{links}"' in body and f'data-nav-resolved="{links}"' in body, body
    assert int(re.search(r'data-nav-width="(\d+)"', body)[1]) > 100  # the side bar is drawn
    text = re.sub(r"<[^>]+>", " ", dom.stdout)
    assert "replicate — results" in text
    for e in entries:
        assert e.title in text.replace("&amp;", "&")
        assert all(c["id"] in text for c in e.claims)

    shot = tmp_path / "screenshot.png"
    result = chromium("--window-size=1280,1800", f"--screenshot={shot}", page.as_uri(), profile=tmp_path / "p2")
    assert result.returncode == 0 and shot.is_file(), result.stderr[-2000:]
    import matplotlib.image

    pixels = (matplotlib.image.imread(shot)[..., :3] * 255).round().astype(int)
    assert pixels.shape[:2] == (1800, 1280)
    colours = {tuple(p) for p in pixels.reshape(-1, 3)[::7]}
    assert len(colours) > 50, "the screenshot is (nearly) blank"
    for hex_colour in ("#1a7f37", "#cf222e"):  # the replicated and not-replicated badges are drawn
        rgb = np.array([int(hex_colour[i:i + 2], 16) for i in (1, 3, 5)])
        assert (np.abs(pixels - rgb).sum(axis=-1) <= 6).sum() > 50, hex_colour
    band = np.array([0, 114, 178])  # the first figure's png is on screen
    assert (np.abs(pixels - band).sum(axis=-1) <= 6).sum() > 1000
