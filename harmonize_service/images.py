"""Standardised T1w images of a study: each measured T1w series read from the blob store,
mapped with the installed Nyúl model (or WhiteStripe), written as NIfTI to the blob store.

The model is a write-once artefact (`models/intensity/sha256-<hex>.json`); the state store
holds the current one's version. Output keys:
`harmonized/<site>/<study>/r<revision>/<series>_desc-<method>_T1w.nii.gz`, the method
label carrying the first 12 hex digits of the Nyúl model's version (`desc-nyul1a2b...`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from harmonize_service.intensity import (
    IntensityError,
    NyulModel,
    apply_nyul,
    apply_whitestripe,
    fit_whitestripe,
    foreground_mask,
    nifti_gz,
)
from services.blobstore import FileBlobStore, PutResult
from services.events import StudyQCCompleted
from services.state import StateStore
from services.volume import VolumeError, load_dicom_series

log = logging.getLogger(__name__)
CURRENT_KEY = "harmonize:intensity:current"
MODEL_PREFIX = "models/intensity"


def model_key(version: str) -> str:
    return f"{MODEL_PREFIX}/{version.replace(':', '-')}.json"


def put_intensity_model(blobs: FileBlobStore, text: str) -> str:
    """Store a Nyúl model (validated) write-once in the blob store; returns its version."""
    model = NyulModel.from_json(text)
    blobs.put_new(model_key(model.version), model.to_json().encode())
    return model.version


@dataclass(frozen=True)
class IntensityStore:
    blobs: FileBlobStore
    state: StateStore

    def install(self, text: str) -> str:
        """Store a Nyúl model (validated) and make it current; returns its version."""
        version = put_intensity_model(self.blobs, text)
        self.state.set(CURRENT_KEY, version.encode())
        return version

    def current(self) -> NyulModel | None:
        raw = self.state.get(CURRENT_KEY)
        if raw is None:
            return None
        return NyulModel.from_json(self.blobs.get(model_key(raw.decode())).decode())


def standardise_study(
    completed: StudyQCCompleted, *, blobs: FileBlobStore, model: NyulModel | None,
    method: str = "nyul",
) -> dict[str, str]:
    """Series uid -> blob key of its standardised image, for every measured T1w series.

    Nothing is written for `nyul` without a model. A series that cannot be read or
    standardised is logged and left out; the study's features are still harmonized.
    """
    if method == "nyul" and model is None:
        return {}
    images: dict[str, str] = {}
    for series in completed.series:
        if series.series_type != "t1w" or series.status != "measured":
            continue
        prefix = f"dicom/{completed.site}/{completed.study_uid}/{series.series_uid}"
        label = f"nyul{model.version[7:19]}" if method == "nyul" and model else method
        key = (f"harmonized/{completed.site}/{completed.study_uid}/r{completed.revision}/"
               f"{series.series_uid}_desc-{label}_T1w.nii.gz")
        try:
            volume = load_dicom_series([blobs.path(k) for k in sorted(blobs.list(prefix))])
            mask = foreground_mask(volume.data)
            if method == "whitestripe":
                data = apply_whitestripe(fit_whitestripe(volume.data, mask), volume.data)
            else:
                assert model is not None
                data = apply_nyul(model, volume.data, mask)
        except (VolumeError, IntensityError) as exc:
            log.warning("T1w series not standardised",
                        extra={"series_uid": series.series_uid, "error": str(exc)})
            continue
        if blobs.put_new(key, nifti_gz(data, volume.affine)) is PutResult.CONFLICT:
            log.error("a different standardised image is stored under the same key",
                      extra={"key": key})
            continue
        images[series.series_uid] = key
    return images
