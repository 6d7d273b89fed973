"""The claims json's digest: it survives the writer's round trip, and every forgery the scorecard
used to accept (a measured value alone, a consistent set of numbers, one unit) is refused with
one line naming the file and the field."""

import copy
import json
import math

import pytest

from replicate import integrity, runs
from replicate.claims import Estimate

SHIPPED = "figures/mixture_of_recursions/isoflop.json"


def record() -> dict:
    """A claims record as the notebook builds it (numpy-free here), NaN included."""
    return {
        "paper": "toy", "figure": "main", "wall_seconds": 3.2,
        "runs": [{"run": "0123456789abcdef", "wall_seconds": 1.5, "metrics_sha256": "a" * 64}],
        "measurements": {"gap": {"value": -0.1392, "interval": [-0.15, -0.12], "n": 3,
                                 "units": [-0.13, -0.14, -0.145]},
                         "diverged_loss": float("nan")},
        "claims": [{"id": "gap_negative", "measured": -0.1392, "interval": [-0.15, -0.12],
                    "verdict": "replicated", "reason": "interval lies inside '< 0'"}],
    }


def written(tmp_path, payload) -> dict:
    """``payload`` with its digest, through the json writer and a plain reader."""
    payload = {**payload, "digest": integrity.digest(payload)}
    runs.write_json_atomic(tmp_path / "main.json", payload)
    return json.loads((tmp_path / "main.json").read_text())


def test_the_digest_survives_the_writers_round_trip(tmp_path):
    on_disk = written(tmp_path, record())
    integrity.check(on_disk, "main.json")  # NaN became null + non_finite: the same digest
    integrity.check(runs.read_json(tmp_path / "main.json"), "main.json")  # NaN restored: the same


def test_the_digest_is_the_same_for_estimate_objects_and_their_dicts():
    estimate = Estimate(value=0.5, interval=(0.4, 0.6), n=3, method="t", units=[0.4, 0.5, 0.6])
    as_object = {**record(), "measurements": {"x": estimate}}
    as_dict = {**record(), "measurements": {"x": estimate.to_dict()}}
    assert integrity.digest(as_object) == integrity.digest(as_dict)


@pytest.mark.parametrize("forge,field", [
    (lambda r: r["claims"][0].update(measured=-0.14), "claims"),  # the measured value alone
    (lambda r: (r["claims"][0].update(measured=0.01, interval=[0.0, 0.02], verdict="not_replicated",
                                      reason="forged"),
                r["measurements"]["gap"].update(value=0.01, interval=[0.0, 0.02], units=[0.0, 0.01, 0.02])),
     "measurements"),  # a consistent forgery: claim and measurement edited together
    (lambda r: r["measurements"]["gap"]["units"].__setitem__(1, 99), "measurements"),  # one unit
    (lambda r: r["runs"][0].update(run="fedcba9876543210"), "runs"),  # another run's result
])
def test_each_forgery_is_refused_in_one_line_naming_file_and_field(tmp_path, forge, field):
    forged = copy.deepcopy(written(tmp_path, record()))
    forge(forged)
    with pytest.raises(integrity.IntegrityError) as err:
        integrity.check(forged, "figures/toy/main.json")
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("figures/toy/main.json: field ") and f"'{field}'" in message


def test_a_json_without_a_digest_or_with_an_edited_one_is_refused(tmp_path):
    with pytest.raises(integrity.IntegrityError, match="main.json: no digest"):
        integrity.check(record(), "main.json")
    edited = written(tmp_path, record())
    edited["digest"] = edited["digest"].replace("claims:", "verdicts:")
    with pytest.raises(integrity.IntegrityError, match="has no 'claims' part"):
        integrity.check(edited, "main.json")


def test_a_run_whose_metrics_changed_since_the_figure_read_them_is_refused(tmp_path):
    run_dir = tmp_path / "runs" / "toy" / "0123456789abcdef"
    runs.write_json_atomic(run_dir / "metrics.json", {"final_val_loss": 0.5})
    payload = record()
    payload["runs"][0]["metrics_sha256"] = integrity.metrics_sha256(run_dir)
    on_disk = written(tmp_path, payload)
    integrity.check(on_disk, "main.json", runs_dir=tmp_path / "runs" / "toy")
    runs.write_json_atomic(run_dir / "metrics.json", {"final_val_loss": 0.4})
    with pytest.raises(integrity.IntegrityError, match=r"field 'runs\[0\].metrics_sha256'"):
        integrity.check(on_disk, "main.json", runs_dir=tmp_path / "runs" / "toy")


def test_the_smallest_change_of_one_unit_changes_only_the_measurements_part():
    """On a shipped figure's numbers: one unit moved by one ulp."""
    from replicate import config as C

    shipped = json.loads((C.REPO_ROOT / SHIPPED).read_text())
    before = integrity.digest(shipped)
    units = shipped["measurements"]["gap_ec2_vs_vanilla_causal"]["units"]
    units[0] = math.nextafter(units[0], 0.0)
    assert integrity.digest(shipped).split()[0] != before.split()[0]
    assert integrity.digest(shipped).split()[1:] == before.split()[1:]
