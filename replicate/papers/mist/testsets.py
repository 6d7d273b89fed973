"""MIST's fixed test sets (not imported by training: they can change without retraining).

Every dataset is seeded by sha256 of its split and cell, so every run, model and notebook sees
the same datasets. Target MI is drawn uniformly on [0, ``mi_max``] (no point mass: the test prior
is not the training prior), except for the independence split (MI = 0 exactly).

Splits
  ``in``        the 16 training families (in-meta-distribution).
  ``out``       the official out-of-meta-distribution combinations, ``OFFICIAL_OOMD`` (the list of
                grgera/mist ``configs/data_generation/test_oomd.yaml``; ``wigglify`` = our
                ``wiggly``, ``additive_noise`` = our ``additive-noise``). None is a training family.
  ``copula``    an external set of our own (``copula_sets``): Gaussian copulas (dense, sparse or
                latent-variable covariance, MI ~ U(0, ``mi_max``), small by default) under
                coordinate-wise marginal transforms that no training family uses
                (``COPULA_MARGINALS``: log-normal exp(z), sinh(z), z³, the uniform Φ(z), an affine
                100 z + 3, and a per-coordinate mix of these). MI is that of the Gaussian.
  ``independent`` independent pairs (MI = 0 exactly, ``independence_sets``): the Gaussian and
                additive-noise training families at zero strength, and independent copulas under
                the external marginals. (Student-t pairs are never independent: their shared scale
                carries MI, so they are not in this split.)

  ``ood_copula`` / ``ood_nonmonotone`` (``ood_sets``, module ``ood``): copulas a rank transform
                cannot remove (Clayton, Gumbel, a Student-t copula with ν = 1) and non-monotone
                dependence (Y = X² + σε, Y = sin 2X + σε).
  ``ood_high_mi`` the training families with true MI ~ U(2, 4) nats, above the training prior's 2.
  ``ood_large_n`` the training families at sample sizes above the trained range (n > 200).

Unequal dimensions: every cell is a (d_x, d_y) pair; ``d_grid`` gives d_x = d_y = d and
``unequal`` adds (d_x, d_y) pairs with d_x ≠ d_y.

Held out: every builder takes a ``salt`` that enters every dataset's seed. The figures use their
own salt (``measure.test_salt``); the benchmark and tuning scripts use the default empty salt, so
no dataset a design choice was tuned on is byte-identical to a figure's test dataset (tested).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
from scipy.stats import norm

from replicate.papers.mist.data import TRAIN_FAMILIES
from replicate.papers.mist.families import _gaussian, gaussian_mi, parse_family, sample_dataset, structured_cov
from replicate.papers.mist.ood import OOD_COPULAS, OOD_NONMONOTONE, sample_ood

OFFICIAL_OOMD = (
    "normal-dense-wiggly", "normal-sparse-halfcube", "normal-sparse-asinh", "student-sparse-wiggly",
    "student-dense-halfcube", "additive-noise-base", "additive-noise-halfcube",
)
OOD_FAMILIES = OFFICIAL_OOMD  # the out-of-meta-distribution split is the official one
COPULA_MARGINALS = ("lognormal", "sinh", "cube", "uniform", "affine100", "mixed")
COPULA_STRUCTURES = ("dense", "sparse", "lvm")
INDEPENDENT_FAMILIES = tuple(f for f in TRAIN_FAMILIES if not f.startswith("student"))


@dataclass
class EvalDataset:
    x: np.ndarray
    y: np.ndarray
    mi: float
    family: str
    n: int
    d: int       # d_x
    dy: int = 0  # d_y (0: equal to d)

    def __post_init__(self):
        self.dy = self.dy or self.d


def seeded_rng(*key, salt: str = "") -> np.random.Generator:
    """A generator seeded by sha256 of ``key`` (and ``salt`` when not empty)."""
    head = ("mist", salt) if salt else ("mist",)
    digest = hashlib.sha256(":".join(map(str, (*head, *key))).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "big"))


def dim_pairs(d_grid, unequal=()) -> list[tuple[int, int]]:
    return [(int(d), int(d)) for d in d_grid] + [(int(a), int(b)) for a, b in unequal]


def evaluation_sets(split: str, n_grid, d_grid, per_cell: int, mi_max: float = 2.0, families=None,
                    unequal=(), salt: str = "", mi_min: float = 0.0) -> list[EvalDataset]:
    """The fixed test datasets of a split (``in`` or ``out`` of the meta-distribution; with
    ``families`` given, any split name, e.g. ``ood_high_mi`` with ``mi_min`` 2, ``ood_large_n``);
    true MI ~ U(``mi_min``, ``mi_max``)."""
    if families is None:
        if split not in ("in", "out"):
            raise ValueError(f"split must be 'in' or 'out', got {split!r}")
        families = TRAIN_FAMILIES if split == "in" else OFFICIAL_OOMD
    out = []
    for family in families:
        for n in n_grid:
            for dx, dy in dim_pairs(d_grid, unequal):
                for rep in range(per_cell):
                    key = ("eval", split, family, n, dx, rep) if dx == dy else ("eval", split, family, n, dx, dy, rep)
                    rng = seeded_rng(*key, salt=salt)
                    x, y, mi = sample_dataset(family, int(n), dx, dy, rng, float(rng.uniform(mi_min, mi_max)))
                    out.append(EvalDataset(x, y, mi, family, int(n), dx, dy))
    return out


def ood_sets(split: str, families, n_grid, d_grid, per_cell: int, mi_max: float = 2.0, unequal=(),
             salt: str = "") -> list[EvalDataset]:
    """Datasets of the rank-invariance-breaking families of ``ood`` (``ood.OOD_FAMILIES``), true MI
    ~ U(0, ``mi_max``) split evenly over min(d_x, d_y) coupled pairs."""
    out = []
    for family in families:
        for n in n_grid:
            for dx, dy in dim_pairs(d_grid, unequal):
                for rep in range(per_cell):
                    rng = seeded_rng("ood", split, family, n, dx, dy, rep, salt=salt)
                    x, y, mi = sample_ood(family, int(n), dx, dy, rng, float(rng.uniform(0.0, mi_max)))
                    out.append(EvalDataset(x, y, mi, family, int(n), dx, dy))
    return out


# --------------------------------------------------------------------------- external copulas
def marginal(name: str, z: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A strictly increasing map of standard-normal coordinates (MI-preserving), none of which a
    training family uses; ``mixed`` draws one of the others per coordinate."""
    if name == "lognormal":
        return np.exp(z)
    if name == "sinh":
        return np.sinh(z)
    if name == "cube":
        return z ** 3
    if name == "uniform":
        return norm.cdf(z)
    if name == "affine100":
        return 100.0 * z + 3.0
    if name == "mixed":
        names = [m for m in COPULA_MARGINALS if m != "mixed"]
        picks = rng.integers(0, len(names), z.shape[1])
        return np.column_stack([marginal(names[k], z[:, [j]], rng)[:, 0] for j, k in enumerate(picks)])
    raise ValueError(f"unknown marginal {name!r}; expected one of {COPULA_MARGINALS}")


def copula_dataset(structure: str, marginal_name: str, n: int, dx: int, dy: int, mi: float,
                   rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, float]:
    """A Gaussian copula with the given covariance structure and target MI under ``marginal_name``."""
    cov = structured_cov(structure, dx, mi, rng, dy)
    z = _gaussian(cov, n, rng)
    return marginal(marginal_name, z[:, :dx], rng), marginal(marginal_name, z[:, dx:], rng), \
        max(gaussian_mi(cov, dx), 0.0)


def copula_sets(n_grid, d_grid, per_cell: int, mi_max: float = 0.7, unequal=(),
                marginals=COPULA_MARGINALS, structures=COPULA_STRUCTURES, salt: str = "") -> list[EvalDataset]:
    """The external copula split (module docstring): per marginal, n, (d_x, d_y) and rep one
    dataset, its structure cycling through ``structures``."""
    out = []
    for m in marginals:
        for n in n_grid:
            for dx, dy in dim_pairs(d_grid, unequal):
                for rep in range(per_cell):
                    rng = seeded_rng("copula", m, n, dx, dy, rep, salt=salt)
                    structure = structures[rep % len(structures)]
                    x, y, mi = copula_dataset(structure, m, int(n), dx, dy, float(rng.uniform(0.0, mi_max)), rng)
                    out.append(EvalDataset(x, y, mi, f"copula-{structure}-{m}", int(n), dx, dy))
    return out


def independence_sets(n_grid, d_grid, per_cell: int, unequal=(), salt: str = "") -> list[EvalDataset]:
    """Independent pairs (MI = 0): every non-Student training family at zero strength and every
    external copula marginal, per n, (d_x, d_y) and rep."""
    out = []
    for n in n_grid:
        for dx, dy in dim_pairs(d_grid, unequal):
            for rep in range(per_cell):
                for family in INDEPENDENT_FAMILIES:
                    x, y, mi = sample_dataset(family, int(n), dx, dy, seeded_rng("indep", family, n, dx, dy, rep, salt=salt), 0.0)
                    out.append(EvalDataset(x, y, mi, family, int(n), dx, dy))
                for m in COPULA_MARGINALS:
                    rng = seeded_rng("indep", m, n, dx, dy, rep, salt=salt)
                    x, y, mi = copula_dataset("dense", m, int(n), dx, dy, 0.0, rng)
                    out.append(EvalDataset(x, y, mi, f"copula-dense-{m}", int(n), dx, dy))
    return out


OOD_SPLITS = {"ood_copula": OOD_COPULAS, "ood_nonmonotone": OOD_NONMONOTONE}


def figure_sets(measure: dict) -> dict[str, list[EvalDataset]]:
    """Every test split of a figure's ``measure`` (keys ``eval``, ``ood``, ``independent``,
    ``test_salt``): ``in``, ``out``, ``ood_copula``, ``ood_nonmonotone``, ``ood_high_mi``,
    ``ood_large_n``, ``independent`` (a split whose spec is missing is left out)."""
    salt = str(measure.get("test_salt", ""))
    spec, ood = measure["eval"], measure.get("ood") or {}
    unequal = [tuple(p) for p in spec.get("unequal", [])]
    sets = {split: evaluation_sets(split, spec["n_grid"], spec["d_grid"], spec["per_cell"], spec["mi_max"],
                                   unequal=unequal, salt=salt) for split in ("in", "out")}
    for split, families in OOD_SPLITS.items():
        if split.removeprefix("ood_") in ood:
            c = ood[split.removeprefix("ood_")]
            sets[split] = ood_sets(split, families, c["n_grid"], c["d_grid"], c["per_cell"], c["mi_max"],
                                   [tuple(p) for p in c.get("unequal", [])], salt=salt)
    if "high_mi" in ood:
        c = ood["high_mi"]
        sets["ood_high_mi"] = evaluation_sets("ood_high_mi", c["n_grid"], c["d_grid"], c["per_cell"],
                                              c["mi_range"][1], families=TRAIN_FAMILIES, salt=salt,
                                              mi_min=c["mi_range"][0])
    if "large_n" in ood:
        c = ood["large_n"]
        sets["ood_large_n"] = evaluation_sets("ood_large_n", c["n_grid"], c["d_grid"], c["per_cell"], c["mi_max"],
                                              families=TRAIN_FAMILIES, salt=salt)
    if measure.get("independent"):
        c = measure["independent"]
        sets["independent"] = independence_sets(c["n_grid"], c["d_grid"], c["per_cell"],
                                                [tuple(p) for p in c.get("unequal", [])], salt=salt)
    return sets


def dataset_digest(ds: EvalDataset) -> str:
    """sha256 of a dataset's bytes (x, y as float64): equal digests = byte-identical datasets."""
    h = hashlib.sha256()
    for v in (ds.x, ds.y):
        a = np.ascontiguousarray(np.asarray(v, dtype=np.float64))
        h.update(f"{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def check_families(families) -> None:
    for family in families:
        parse_family(family)
