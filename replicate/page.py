"""A figure's code-free page: its executed notebook as static HTML that works offline.

nbconvert's ``lab`` template loads MathJax, require.js and mermaid from a CDN; offline the maths
would show as raw TeX. Here every ``$…$`` and ``$$…$$`` of the Markdown (cells and Markdown
outputs such as the generated answer) and of HTML tables is rendered to MathML before export (latex2mathml; browsers
render MathML natively), and the template leaves every script out: the page is text, tables and
images only, whatever the network.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

# the lab template without its remote scripts (MathJax, require.js, mermaid, widgets)
OFFLINE_TEMPLATE = """{%- extends 'lab/index.html.j2' -%}
{%- block html_head_js -%}{%- endblock html_head_js -%}
{%- block html_head_js_mathjax -%}{%- endblock html_head_js_mathjax -%}
{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}
{% block jupyter_widgets %}{% endblock jupyter_widgets %}
"""

# code spans and fenced blocks are left alone; then $$display$$ and $inline$ (no space just inside
# the dollars, no digit right after the closing one: "$5 and $6" is not maths)
_CODE = re.compile(r"(```.*?```|`[^`\n]*`)", re.S)
_DISPLAY = re.compile(r"\$\$(.+?)\$\$", re.S)
_INLINE = re.compile(r"(?<![\\$\w])\$(?![\s$])([^$\n]+?)(?<![\s\\])\$(?![\d$\w])")


def render_math(text: str) -> str:
    """Markdown with its TeX maths as MathML (code spans untouched). TeX latex2mathml cannot parse
    raises ValueError naming the expression, so a page never ships raw TeX silently."""
    parts = _CODE.split(text)
    for i in range(0, len(parts), 2):  # even parts are outside code
        parts[i] = _INLINE.sub(lambda m: _mathml(m.group(1), "inline"),
                               _DISPLAY.sub(lambda m: _mathml(m.group(1), "block"), parts[i]))
    return "".join(parts)


def _mathml(tex: str, display: str) -> str:
    from latex2mathml.converter import convert

    try:
        return convert(tex.strip(), display=display)
    except Exception as err:  # latex2mathml raises its own exception types for bad TeX
        raise ValueError(f"cannot render the maths ${tex}$ to MathML: {err}") from None


def offline_notebook(nb):
    """A copy of the notebook whose Markdown (cells and Markdown outputs) and HTML outputs (tables
    whose labels carry TeX) carry MathML."""
    nb = copy.deepcopy(nb)
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            cell.source = render_math(cell.source)
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            for kind in ("text/markdown", "text/html"):
                if kind in data:
                    data[kind] = render_math("".join(data[kind]))
    return nb


def write_page(nb, target: Path) -> None:
    """The executed notebook as a static page without code (inputs and prompts left out) and
    without scripts: the answer, the prose, the figures and the tables, offline."""
    import jinja2
    from nbconvert import HTMLExporter

    exporter = HTMLExporter(exclude_input=True, exclude_input_prompt=True, exclude_output_prompt=True,
                            extra_loaders=[jinja2.DictLoader({"offline.html.j2": OFFLINE_TEMPLATE})],
                            template_file="offline.html.j2")
    body, _ = exporter.from_notebook_node(offline_notebook(nb))
    Path(target).write_text(body, encoding="utf-8")
