"""The model artefact: JSON only, content-hash version, exact round trip."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import numpy as np
import pytest

from harmonize_service.combat import CombatOptions, apply, fit
from harmonize_service.model import (
    ModelFormatError,
    content_version,
    from_json,
    to_json,
    version_of,
)

from .factories import site_table

WHEN = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


@pytest.mark.parametrize(
    "options",
    [CombatOptions(), CombatOptions(mean_only=True), CombatOptions(ref_batch="milan")],
    ids=["parametric", "mean-only", "ref-batch"],
)
def test_round_trip_gives_identical_outputs(options: CombatOptions) -> None:
    table = site_table(seed=5)
    model = fit(table.features, table.site, table.covariates, categorical={"sex"}, options=options)
    restored = from_json(to_json(model, created=WHEN))
    assert np.array_equal(
        apply(model, table.features, table.site, table.covariates),
        apply(restored, table.features, table.site, table.covariates),
    )
    assert to_json(restored, created=WHEN) == to_json(model, created=WHEN)


def test_version_is_the_content_hash_and_ignores_creation_time() -> None:
    table = site_table(seed=6)
    model = fit(table.features, table.site, table.covariates, categorical={"sex"})
    text = to_json(model, created=WHEN)
    document = json.loads(text)
    assert document["created"] == WHEN.isoformat()
    assert version_of(text) == content_version(model) == version_of(to_json(model))
    assert version_of(text).startswith("sha256:")
    other = fit(table.features[:-1], table.site[:-1], categorical=set())
    assert content_version(other) != content_version(model)


def test_edited_artefact_is_refused() -> None:
    table = site_table(seed=7)
    document = json.loads(to_json(fit(table.features, table.site)))
    document["grand_mean"]["data"][0] += 1.0
    with pytest.raises(ModelFormatError, match="does not match its version"):
        from_json(json.dumps(document))


def test_not_a_model_is_refused() -> None:
    with pytest.raises(ModelFormatError, match="format"):
        from_json(json.dumps({"format": "pickle"}))
    with pytest.raises(ModelFormatError, match="not a readable"):
        from_json("{")


def test_model_arrays_are_read_only() -> None:
    table = site_table(seed=12)
    for model in (
        fit(table.features, table.site),
        from_json(to_json(fit(table.features, table.site))),
    ):
        with pytest.raises(ValueError, match="read-only"):
            model.gamma_star[0, 0] = 0.0
