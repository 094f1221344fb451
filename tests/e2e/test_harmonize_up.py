"""Models installed while `harmonet up` runs: `harmonet harmonize install` and
`intensity-install` go through `up`'s request spool (the embedded state file is `up`'s),
and the next study pushed is harmonized with both - features and a standardised T1w."""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmwrite

from harmonize_service.combat import fit
from harmonize_service.intensity import fit_nyul, foreground_mask
from harmonize_service.model import to_json
from services import demo_data, demo_head
from services.blobstore import FileBlobStore
from services.events import StudyHarmonized
from tests.support.fakes import wait_for_journal
from tests.support.processes import require_tool, run_harmonet, storescu
from tests.unit.harmonize.factories import HARMONIZE_FEATURES, site_table

pytestmark = [pytest.mark.e2e]
NAMES = tuple(f"t1w.{f}" for f in HARMONIZE_FEATURES)


def _install(verb: str, model: Path, data_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "HARMONET_REDIS_URL"}  # embedded state
    return subprocess.run(
        [sys.executable, "-m", "services.cli", "harmonize", verb, str(model), "--wait", "30"],
        env={**env, "HARMONET_DATA_DIR": str(data_dir)},
        capture_output=True, text=True, timeout=90, check=False,
    )


def _subject_study(directory: Path) -> Path:
    """A milan subject of the demo consortium (a realistic head with milan's effects)."""
    sizes = demo_data.DemoSizes(subjects=1, weeks=1, t1_slices=120, bold_slices=8,
                                bold_volumes=4)
    milan = demo_data.CONSORTIUM[0]
    [study] = [s for s in demo_data.plan((milan,), sizes, seed="harmonize-up")["milan-prisma"]
               if s.kind == "subject"]
    directory.mkdir()
    for number, ds in enumerate(demo_data.instances(study)):
        dcmwrite(directory / f"{number:05d}.dcm", ds, enforce_file_format=True)
    return directory


@pytest.mark.timeout(300)
def test_models_installed_beside_a_running_up_harmonize_the_next_study(tmp_path: Path) -> None:
    require_tool("storescu")
    table = site_table(seed=5, n_features=len(NAMES), scans_per_site={"milan": 6, "naples": 6})
    model = fit(table.features, table.site, feature_names=NAMES, batch_column="site")
    (tmp_path / "model.json").write_text(to_json(model))
    heads = [demo_head.sample_head("t1", shape=(48, 56, 48), voxel_mm=(4.0, 4.0, 4.0),
                                   head_scale=scale) * 900.0 for scale in (0.95, 1.05)]
    nyul = fit_nyul(heads, [foreground_mask(h) for h in heads])
    (tmp_path / "nyul.json").write_text(nyul.to_json())
    study = _subject_study(tmp_path / "study")

    with run_harmonet("up", tmp_path / "data", env={"HARMONET_HARMONIZE_INTENSITY": "nyul"}
                      ) as harmonet:
        installed = _install("install", tmp_path / "model.json", harmonet.data_dir)
        assert installed.returncode == 0, installed.stderr
        assert "made current by `harmonet up`" in installed.stdout
        version = installed.stdout.split()[3]
        installed = _install("intensity-install", tmp_path / "nyul.json", harmonet.data_dir)
        assert installed.returncode == 0, installed.stderr
        assert nyul.version in installed.stdout

        pushed = storescu(harmonet.dicom_port, study, calling_ae="MILANPRISMA")
        assert pushed.returncode == 0, pushed.stderr
        [event] = wait_for_journal(harmonet.data_dir, "study.harmonized", timeout=180)
    harmonized = event.parsed_data()
    assert isinstance(harmonized, StudyHarmonized)
    assert (harmonized.status, harmonized.reason) == ("harmonized", None)
    assert harmonized.model_version == version and harmonized.batch == "milan"
    assert sorted(harmonized.features) == sorted(NAMES)
    assert all(np.isfinite(v) for v in harmonized.features.values())
    [image] = harmonized.images.values()
    assert f"desc-nyul{nyul.version[7:19]}" in image
    nifti = gzip.decompress(FileBlobStore(harmonet.data_dir).get(image))
    assert nifti[344:348] == b"n+1\0"  # a single-file NIfTI-1
