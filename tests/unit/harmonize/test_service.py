"""The harmonize handler on the in-process fakes: QC events in, one study.harmonized per
study revision and status out; a new site is pending, then added without moving old values."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from harmonize_service.app import HarmonizeHandler
from harmonize_service.combat import CombatModel, apply, fit
from harmonize_service.model import to_json
from harmonize_service.newsite import add_batch
from harmonize_service.store import ModelStore
from harmonize_service.study import age_in_years
from services.blobstore import FileBlobStore
from services.bus import Delivery, RetryableError
from services.events import (
    CloudEvent,
    StudyHarmonized,
    make_event,
)
from services.state import InMemoryStateStore
from tests.support.fakes import RecordingBus

from .factories import HARMONIZE_FEATURES, SiteTable, site_table, study_events

FEATURES = HARMONIZE_FEATURES
NAMES = tuple(f"t1w.{f}" for f in FEATURES)


@pytest.fixture
def table() -> SiteTable:
    return site_table(seed=7, n_features=len(FEATURES),
                      scans_per_site={"milan": 30, "oslo": 30, "paris": 30, "porto": 6})


def _model(table: SiteTable) -> CombatModel:
    known = [i for i, s in enumerate(table.site) if s != "porto"]
    return fit(
        table.features[known], [table.site[i] for i in known],
        {"age": [float(table.age[i]) for i in known], "sex": [table.sex[i] for i in known]},
        categorical={"sex"}, feature_names=NAMES, batch_column="site",
    )


def _handler(tmp_path: Path, **kwargs: Any) -> tuple[HarmonizeHandler, RecordingBus]:
    state = InMemoryStateStore()
    bus = RecordingBus()
    store = ModelStore(blobs=FileBlobStore(tmp_path), state=state)
    handler = HarmonizeHandler(store=store, state=state, bus=bus, source="test", **kwargs)
    return handler, bus


def _deliver(routing_key: str, data: Any, uid: str) -> Delivery:
    event = make_event(routing_key, data, source="test", subject=uid, id_parts=(uid,))
    return Delivery(event=event, attempt=1, routing_key=routing_key)


async def _study(
    handler: HarmonizeHandler, table: SiteTable, i: int, *, received: bool = True,
    **kwargs: Any,
) -> None:
    study_received, completed = study_events(table, i, **kwargs)
    if received:
        await handler(_deliver("study.received", study_received, completed.study_uid))
    await handler(_deliver("study.qc.completed", completed, completed.study_uid))


def _harmonized(events: list[CloudEvent]) -> list[StudyHarmonized]:
    return [StudyHarmonized.model_validate(e.data) for e in events
            if e.routing_key == "study.harmonized"]


def _age(table: SiteTable, i: int) -> float:
    # what the handler reads back from the DICOM age string written by `_study`
    value = age_in_years(f"{round(table.age[i]):03d}Y")
    assert value is not None
    return value


async def test_without_a_model_every_study_is_not_applicable(
    tmp_path: Path, table: SiteTable
) -> None:
    handler, bus = _handler(tmp_path)
    await _study(handler, table, 0)
    [data] = _harmonized(bus.events)
    assert (data.status, data.reason, data.features) == ("not_applicable", "no_model", {})


async def test_a_known_site_is_harmonized_with_the_model_version(
    tmp_path: Path, table: SiteTable
) -> None:
    handler, bus = _handler(tmp_path)
    model = _model(table)
    version = handler.store.install(to_json(model))
    await _study(handler, table, 3)
    await _study(handler, table, 3)  # a redelivery: the same fact under the same id
    first, again = bus.of("study.harmonized")
    assert first.id == again.id
    data = _harmonized([first])[0]
    assert (data.status, data.model_version, data.batch) == ("harmonized", version, "milan")
    expected = apply(model, table.features[3:4], ["milan"],
                     {"age": [_age(table, 3)], "sex": [table.sex[3]]})[0]
    assert [data.features[n] for n in NAMES] == list(expected)


async def test_phantoms_and_studies_without_the_features_are_not_applicable(
    tmp_path: Path, table: SiteTable
) -> None:
    handler, bus = _handler(tmp_path)
    handler.store.install(to_json(_model(table)))
    await _study(handler, table, 1, kind="fbirn")
    await _study(handler, table, 2, features=FEATURES[:2])
    reasons = [d.reason for d in _harmonized(bus.events)]
    assert reasons == ["phantom", "no_features"]


async def test_qc_before_the_received_event_is_retried(tmp_path: Path, table: SiteTable) -> None:
    handler, bus = _handler(tmp_path)
    handler.store.install(to_json(_model(table)))
    with pytest.raises(RetryableError, match="not recorded yet"):
        await _study(handler, table, 4, received=False)
    assert bus.events == []


async def test_a_new_site_is_pending_then_added_and_old_values_never_move(
    tmp_path: Path, table: SiteTable
) -> None:
    handler, bus = _handler(tmp_path, min_batch_scans=6)
    model = _model(table)
    old_version = handler.store.install(to_json(model))
    porto = [i for i, s in enumerate(table.site) if s == "porto"]
    await _study(handler, table, 0)
    before = _harmonized(bus.events)[-1]
    for i in porto[:-1]:
        await _study(handler, table, i)
    pending = _harmonized(bus.events)[1:]
    assert [d.status for d in pending] == ["pending"] * 5
    assert {d.batch for d in pending} == {"porto"}
    await _study(handler, table, porto[-1])
    added = _harmonized(bus.events)[6:]
    assert [d.status for d in added] == ["harmonized"] * 6
    new_version = handler.store.current_version()
    assert new_version is not None and new_version != old_version
    assert {d.model_version for d in added} == {new_version}
    # pending and harmonized are two facts: different ids for the same study revision
    ids = [e.id for e in bus.of("study.harmonized")]
    assert len(set(ids)) == len(ids)
    # porto's values are add_batch on exactly its six scans
    extended = add_batch(model, table.features[porto],
                         {"age": [_age(table, i) for i in porto],
                          "sex": [table.sex[i] for i in porto]}, batch="porto")
    expected = apply(extended, table.features[porto], ["porto"] * 6,
                     {"age": [_age(table, i) for i in porto], "sex": [table.sex[i] for i in porto]})
    by_uid = {d.study_uid: d for d in added}
    for row, i in zip(expected, porto, strict=True):
        assert [by_uid[f"1.2.826.0.{i}"].features[n] for n in NAMES] == list(row)
    # a Milan study processed again under the new model: bit-identical values
    handler_after, bus_after = _handler(tmp_path)
    handler_after.store.make_current(new_version)
    await _study(handler_after, table, 0)
    after = _harmonized(bus_after.events)[0]
    assert after.model_version == new_version and after.features == before.features


async def test_scanner_epoch_batches(tmp_path: Path, table: SiteTable) -> None:
    handler, bus = _handler(tmp_path, batch_kind="scanner_epoch", min_batch_scans=30)
    handler.store.install(to_json(_model(table)))
    await _study(handler, table, 0, software="VE11C")
    [data] = _harmonized(bus.events)
    assert (data.status, data.batch) == ("pending", "milan-prisma@VE11C")


def test_dicom_ages() -> None:
    assert age_in_years("070Y") == 70.0
    assert age_in_years("006M") == pytest.approx(0.5)
    assert age_in_years("bad") is None and age_in_years(None) is None
    assert np.isclose(age_in_years("052W") or 0, 52 * 7 / 365.25)


async def test_t1w_images_are_standardised_with_the_installed_nyul_model(
    tmp_path: Path, table: SiteTable
) -> None:
    """The study's T1w series, read from the blob store, is mapped with the installed Nyúl
    model and stored as NIfTI; the event names the blob; nothing without a model."""
    import gzip

    import nibabel as nib

    from harmonize_service.images import IntensityStore
    from harmonize_service.intensity import apply_nyul, fit_nyul, foreground_mask
    from services.volume import load_dicom_series
    from tests.unit.qc.factories import slice_datasets, synthetic_head, write

    pytest.importorskip("nilearn")
    handler, bus = _handler(tmp_path)
    intensity = IntensityStore(blobs=handler.store.blobs, state=handler.state)
    handler = HarmonizeHandler(store=handler.store, state=handler.state, bus=bus,
                               source="test", intensity=intensity)
    _, completed = study_events(table, 0)
    series_uid = completed.series[0].series_uid
    head = synthetic_head(step=4, sigma=10.0, seed=3)
    folder = tmp_path / "dicom" / completed.site / completed.study_uid / series_uid
    write(slice_datasets(head.image * 1.4, row_cos=[1, 0, 0], col_cos=[0, 1, 0],
                         origin=[0, 0, 0], spacing=[4.0, 4.0, 4.0]), folder)

    await _study(handler, table, 0)  # no intensity model yet: no image
    assert _harmonized(bus.events)[-1].images == {}

    reference = synthetic_head(step=4, sigma=10.0, seed=4).image
    model = fit_nyul([reference], [foreground_mask(reference)])
    intensity.install(model.to_json())
    bus.events.clear()
    _, completed = study_events(table, 0)
    completed = completed.model_copy(update={"revision": 2})
    await handler(_deliver("study.qc.completed", completed, completed.study_uid))
    [data] = _harmonized(bus.events)
    key = data.images[series_uid]
    assert key.startswith(f"harmonized/{completed.site}/{completed.study_uid}/r2/")
    assert key.endswith(f"_desc-nyul{model.version[7:19]}_T1w.nii.gz")
    stored = nib.Nifti1Image.from_bytes(gzip.decompress(handler.store.blobs.get(key)))
    volume = load_dicom_series(sorted(folder.iterdir()))
    expected = apply_nyul(model, volume.data, foreground_mask(volume.data))
    np.testing.assert_allclose(np.asarray(stored.dataobj), expected.astype(np.float32))
    np.testing.assert_array_equal(stored.affine, volume.affine)
