"""Provenance: the package closure recorded in every json, the lock file and how they compare."""

from replicate import environment as E
from replicate.scorecard import provenance_warnings


def test_packages_follow_the_requirements_transitively():
    found = E.packages()
    assert {"torch", "lightning", "numpy", "snakemake", "pytest"} <= set(found)  # direct, and the test extra
    assert "lightning-utilities" in found  # only through lightning
    assert "replicate" not in found and list(found) == sorted(found)


def test_the_lock_drops_local_labels_and_reads_back(tmp_path):
    lock = tmp_path / "requirements-lock.txt"
    lock.write_text(E.lock_text({"torch": "2.13.0+cpu", "numpy": "2.4.6"}, "3.11.7"))
    assert "torch==2.13.0\n" in lock.read_text()
    assert E.read_lock(lock) == {"torch": "2.13.0", "numpy": "2.4.6"}
    assert E.read_lock(tmp_path / "absent.txt") == {}


def test_differences_ignore_the_build_label_but_not_the_version():
    lock = {"torch": "2.13.0", "numpy": "2.4.6", "scipy": "1.16.0"}
    recorded = {"torch": "2.13.0+cu126", "numpy": "2.3.0"}
    assert E.lock_differences(recorded, lock) == ["numpy 2.3.0 (lock 2.4.6)", "scipy missing (lock 1.16.0)"]
    assert E.lock_differences(recorded, {}) == []


def test_the_shipped_lock_pins_what_is_installed_here_or_says_so():
    lock = E.read_lock()
    assert {"torch", "lightning", "snakemake", "papermill"} <= set(lock)


def test_a_figure_from_a_dirty_tree_or_other_versions_is_flagged():
    lock = {"torch": "2.13.0"}
    clean = {"git_commit": "a" * 40, "environment": {"packages": {"torch": "2.13.0+cpu"}}}
    assert provenance_warnings(clean, lock) == []
    dirty = {"git_commit": "b" * 40 + "-dirty", "environment": {"packages": {"torch": "2.12.1"}}}
    notes = provenance_warnings(dirty, lock)
    assert notes[0] == "made from uncommitted changes (commit bbbbbbb-dirty)"
    assert "torch 2.12.1 (lock 2.13.0)" in notes[1]
    assert "records no package versions" in provenance_warnings({"git_commit": "c" * 40}, lock)[0]
