"""A figure's page works offline: maths rendered to MathML, no remote script."""

import re

import nbformat
import pytest

from replicate import page


def test_inline_and_display_maths_become_mathml_and_code_is_left_alone():
    text = "Gate $Y' = Y \\odot \\sigma(X W)$ and $$\\mathcal{D}_1$$ but `$HOME` and $5 or $6 stay."
    out = page.render_math(text)
    assert out.count("<math") == 2 and 'display="block"' in out and "`$HOME`" in out
    assert "$5 or $6" in out and "\\odot" not in out


def test_bad_tex_is_an_error_naming_the_expression():
    with pytest.raises(ValueError, match=r"cannot render the maths \$x\^\$"):
        page.render_math("broken $x^$ here")


def test_the_page_has_no_remote_script_and_no_raw_tex(tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("The rate $\\mathcal{D}_1 = O(n^{-1/2})$."),
                nbformat.v4.new_code_cell("x", outputs=[
                    nbformat.v4.new_output("display_data", data={"text/markdown": "**answer** $N_r$"}),
                    nbformat.v4.new_output("display_data", data={
                        "text/html": "<table><tr><th>Voronoi $\\mathcal{D}_1$</th></tr></table>"})])]
    page.write_page(nb, tmp_path / "p.html")
    html = (tmp_path / "p.html").read_text()
    assert not re.findall(r"<script[^>]*\bsrc=", html), "a remote script"
    assert "cdn" not in html.lower() and "mathjax" not in html.lower()
    assert html.count("<math") == 3 and not re.search(r"\$[^$\s<>]{1,40}\$", html)
