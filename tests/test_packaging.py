"""The two install paths agree, and the source notebooks are committed clean."""

import json
import tomllib

import yaml

from replicate import config as C


def test_environment_yml_states_the_same_dependencies_as_pyproject():
    project = tomllib.loads((C.REPO_ROOT / "pyproject.toml").read_text())["project"]
    wanted = set(project["dependencies"]) | set(project["optional-dependencies"]["test"])
    env = yaml.safe_load((C.REPO_ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert set(pip) - {"-e ."} == wanted
    python = next(d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python"))
    assert python == f"python{project['requires-python']}"


def test_every_figure_config_has_a_clean_notebook_with_a_parameters_cell():
    for figure in C.list_figures():
        nb = json.loads((C.REPO_ROOT / "notebooks" / f"{figure}.ipynb").read_text())
        code = [c for c in nb["cells"] if c["cell_type"] == "code"]
        assert all(not c["outputs"] and c["execution_count"] is None for c in code), f"{figure}: outputs committed"
        params = [c for c in code if "parameters" in c["metadata"].get("tags", [])]
        assert len(params) == 1, f"{figure}: needs exactly one cell tagged 'parameters'"
        assert f'figure = "{figure}"' in "".join(params[0]["source"])
