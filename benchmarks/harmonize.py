"""Harmonization benchmark: our ComBat / ComBat-GAM against neuroHarmonize, same data, one run.

    python benchmarks/harmonize.py          # linear 10 000 x 1 000 x 20 sites, GAM 2 000 x 100 x 10
    python benchmarks/harmonize.py --quick  # small tables, seconds (a test runs this)

Cases (single-threaded BLAS for both sides, set before numpy loads):

- `linear`: fit + harmonize the training table with parametric EB and covariates age, sex
  (`harmonize_service.combat.fit` + `apply` vs `neuroHarmonize.harmonizationLearn`).
  Target: not slower (ratio >= 1).
- `gam`: the same with age as a smooth term (`harmonize_service.gam.fit_gam` vs
  `harmonizationLearn(smooth_terms=["age"])`, both 5-fold CV over the same 11 penalties).
  Target: >= 20x faster.
- `apply_one`: harmonizing one scan with the fitted linear model (median of many calls;
  neuroHarmonize's `applyModelOne` shown for reference). Target: <= 10 ms.

Linear fits are timed 3 times on each side (the fastest counts: the machine may be shared);
the GAM peer takes about a minute at full size, so each GAM side runs once.

Each case prints `RESULT case=<name> ours_s=<s> peer_s=<s> ratio=<peer/ours>`; a table with
the targets follows.
"""

from __future__ import annotations

import os

for _variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_variable] = "1"

import argparse  # noqa: E402
import contextlib  # noqa: E402
import io  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harmonize_service.combat import CombatModel, apply, fit  # noqa: E402
from harmonize_service.gam import SmoothOptions, fit_gam  # noqa: E402

FULL = {"linear": (10_000, 1_000, 20), "gam": (2_000, 100, 10)}
QUICK = {"linear": (600, 40, 4), "gam": (240, 6, 3)}
REPEATS = 3
TARGETS = {"linear": "ratio >= 1", "gam": "ratio >= 20", "apply_one": "ours <= 10 ms"}


def table(n_scans: int, n_features: int, n_sites: int, *, seed: int = 0) -> dict[str, Any]:
    """Site shifts and scales, a linear sex effect and a curved age effect."""
    rng = np.random.default_rng(seed)
    site = rng.integers(0, n_sites, n_scans)
    site[:n_sites * 3] = np.repeat(np.arange(n_sites), 3)  # every site has scans
    age = np.round(rng.uniform(20, 80, n_scans) * 4) / 4
    sex = rng.integers(0, 2, n_scans).astype(np.float64)
    curve = np.exp(-(((age - 45.0) / 15.0) ** 2))[:, None] * rng.uniform(0.1, 0.5, n_features)
    shift = rng.normal(0, 0.3, (n_sites, n_features))
    scale = rng.uniform(0.6, 1.6, (n_sites, n_features))
    noise = rng.normal(0, 0.2, (n_scans, n_features))
    features = 3.0 + curve + sex[:, None] * 0.1 + shift[site] + noise * scale[site]
    return {"features": features, "site": [f"site{s:02d}" for s in site], "age": age,
            "sex": sex}


def _ours_linear(data: dict[str, Any]) -> tuple[float, CombatModel]:
    covariates = {"age": data["age"], "sex": data["sex"]}
    start = time.perf_counter()
    model = fit(data["features"], data["site"], covariates)
    apply(model, data["features"], data["site"], covariates)
    return time.perf_counter() - start, model


def _ours_gam(data: dict[str, Any]) -> float:
    covariates = {"age": data["age"], "sex": data["sex"]}
    start = time.perf_counter()
    model = fit_gam(data["features"], data["site"], covariates, smooth=SmoothOptions("age"))
    apply(model, data["features"], data["site"], covariates)
    return time.perf_counter() - start


def _peer(data: dict[str, Any], *, smooth: bool) -> tuple[float, Any]:
    import pandas as pd  # type: ignore[import-untyped]
    from neuroHarmonize import harmonizationLearn  # type: ignore[import-untyped]

    covars = pd.DataFrame({"SITE": data["site"], "age": data["age"], "sex": data["sex"]})
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        model, _ = harmonizationLearn(data["features"].copy(), covars,
                                      smooth_terms=["age"] if smooth else [], seed=0)
    return time.perf_counter() - start, model


def _apply_one(model: CombatModel, data: dict[str, Any], peer_model: Any, calls: int
               ) -> tuple[float, float]:
    import pandas as pd
    from neuroHarmonize.harmonizationApply import applyModelOne  # type: ignore[import-untyped]

    ours, theirs = [], []
    for i in range(calls):
        row = data["features"][i : i + 1]
        covariates = {"age": [data["age"][i]], "sex": [data["sex"][i]]}
        start = time.perf_counter()
        apply(model, row, [data["site"][i]], covariates)
        ours.append(time.perf_counter() - start)
        covars = pd.DataFrame({"SITE": [data["site"][i]], "age": [data["age"][i]],
                               "sex": [data["sex"][i]]})
        start = time.perf_counter()
        applyModelOne(row, covars, peer_model)
        theirs.append(time.perf_counter() - start)
    return statistics.median(ours), statistics.median(theirs)


def _result(case: str, ours: float, peer: float) -> dict[str, float]:
    print(f"RESULT case={case} ours_s={ours:.6f} peer_s={peer:.6f} ratio={peer / ours:.2f}",
          flush=True)
    return {"ours": ours, "peer": peer}


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small tables, seconds")
    parser.add_argument("--cases", default="linear,gam,apply_one")
    args = parser.parse_args()
    sizes = QUICK if args.quick else FULL
    cases = set(args.cases.split(","))
    warnings.filterwarnings("ignore")  # the peer's np.matrix and pandas warnings
    results: dict[str, dict[str, float]] = {}
    linear = table(*sizes["linear"])
    if cases & {"linear", "apply_one"}:
        ours_runs = [_ours_linear(linear) for _ in range(REPEATS)]
        peer_runs = [_peer(linear, smooth=False) for _ in range(REPEATS)]
        ours_s, model = min(ours_runs, key=lambda run: run[0])
        peer_s, peer_model = min(peer_runs, key=lambda run: run[0])
        if "linear" in cases:
            results["linear"] = _result("linear", ours_s, peer_s)
        if "apply_one" in cases:
            ours_one, peer_one = _apply_one(model, linear, peer_model, 50 if args.quick else 200)
            results["apply_one"] = _result("apply_one", ours_one, peer_one)
    if "gam" in cases:
        gam = table(*sizes["gam"], seed=1)
        results["gam"] = _result("gam", _ours_gam(gam), _peer(gam, smooth=True)[0])
    _print_table(results, sizes, quick=args.quick)
    return 0


def _print_table(results: dict[str, dict[str, float]], sizes: dict[str, tuple[int, int, int]],
                 *, quick: bool) -> None:
    print(f"\n{'case':<10} {'size (scans x features x sites)':<32} {'ours':>10} "
          f"{'neuroHarmonize':>15} {'ratio':>8}  target")
    for case, result in results.items():
        size = "1 scan" if case == "apply_one" else " x ".join(map(str, sizes[case]))
        ratio = result["peer"] / result["ours"]
        unit = 1000.0 if case == "apply_one" else 1.0
        suffix = "ms" if case == "apply_one" else "s"
        target = TARGETS[case] + (" (not judged: --quick)" if quick else "")
        print(f"{case:<10} {size:<32} {result['ours'] * unit:>8.3f}{suffix:<2} "
              f"{result['peer'] * unit:>13.3f}{suffix:<2} {ratio:>8.1f}  {target}")


if __name__ == "__main__":
    raise SystemExit(main())
