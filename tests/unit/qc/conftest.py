"""Synthetic heads (session-scoped: they take a second each) and MRIQC's own
`mriqc/qc/anatomical.py`, loaded by path.

mriqc is a test-only reference installed without its dependencies
(`pip install --no-deps mriqc==24.0.2`: its full install pulls torch and pins numpy 1.x).
Its module imports `mriqc.config` only for a logger, so a stub stands in for it.
`summary_stats` also needs statsmodels.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path
from typing import Any

import pytest

from tests.support.ci import skip_or_fail
from tests.unit.qc.factories import SyntheticHead, nilearn_data_dir, synthetic_head


def _require_nilearn_data() -> None:
    data_dir = nilearn_data_dir()
    if data_dir is None or not (data_dir / "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz"
                                ).exists():
        skip_or_fail("nilearn (MNI152 2009 tissue maps) not installed")


@pytest.fixture(scope="session")
def head() -> SyntheticHead:
    _require_nilearn_data()
    return synthetic_head(step=2, sigma=20.0, bias_amplitude=0.0, seed=1)


@pytest.fixture(scope="session")
def biased_head() -> SyntheticHead:
    _require_nilearn_data()
    return synthetic_head(step=2, sigma=20.0, bias_amplitude=0.15, seed=2)


@pytest.fixture(scope="session")
def mriqc_anatomical() -> Any:
    spec = importlib.util.find_spec("mriqc")
    if spec is None or not spec.submodule_search_locations:
        skip_or_fail("mriqc not installed (pip install --no-deps mriqc==24.0.2)")
        raise AssertionError  # unreachable: skip_or_fail raises
    path = Path(next(iter(spec.submodule_search_locations))) / "qc" / "anatomical.py"
    config = types.ModuleType("mriqc.config")
    config.loggers = types.SimpleNamespace(  # type: ignore[attr-defined]
        interface=types.SimpleNamespace(warning=lambda *a, **k: None))
    package = types.ModuleType("mriqc")
    package.config = config  # type: ignore[attr-defined]
    saved = {name: sys.modules.get(name) for name in ("mriqc", "mriqc.config")}
    sys.modules.update({"mriqc": package, "mriqc.config": config})
    try:
        module_spec = importlib.util.spec_from_file_location("mriqc_qc_anatomical", path)
        assert module_spec is not None and module_spec.loader is not None
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
    finally:
        for name, previous in saved.items():
            if previous is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = previous
    return module
