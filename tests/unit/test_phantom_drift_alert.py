"""From phantom images to alerts: a synthetic fBIRN run per session, its SFNR measured by
`fbirn_metrics`, tracked by the control chart. A 3% SFNR drop must alert within 3
sessions; 100 stable sessions must not alert."""

from __future__ import annotations

import numpy as np
import pytest

from qc_service import control_chart
from qc_service.metrics.phantom import fbirn_metrics

MATRIX, SLICES, FRAMES = 32, 3, 200  # the fBIRN protocol: 200 frames
SIGNAL, NOISE = 1000.0, 5.0  # SFNR about 200, a typical fBIRN value at 3 T
SESSION_CV = 0.005  # session-to-session signal variation of a stable scanner (0.5%)


def _session(rng: np.random.Generator, *, sfnr_factor: float) -> float:
    """One stability run; `sfnr_factor` scales the temporal noise (SFNR ∝ 1/noise)."""
    yy, xx = np.mgrid[:MATRIX, :MATRIX] - (MATRIX - 1) / 2
    disk = (yy**2 + xx**2) <= (0.4 * MATRIX) ** 2
    level = SIGNAL * (1 + rng.normal(0, SESSION_CV))
    noise = rng.normal(0, NOISE / sfnr_factor, (MATRIX, MATRIX, SLICES, FRAMES))
    run = np.where(disk[:, :, None, None], level, 10.0) + noise
    return fbirn_metrics(run, repetition_time_s=2.0)["sfnr"]


def _chart(rng: np.random.Generator, factors: list[float]) -> list[control_chart.ChartUpdate]:
    updates, state = [], None
    for session, factor in enumerate(factors):
        update = control_chart.update(
            state,
            _session(rng, sfnr_factor=factor),
            baseline_sessions=8,
            session_id=f"session-{session}",
        )
        updates.append(update)
        state = update.state
    return updates


@pytest.mark.parametrize("seed", range(10))
def test_three_percent_sfnr_drop_alerts_within_three_sessions(seed: int) -> None:
    rng = np.random.default_rng(seed)
    updates = _chart(rng, [1.0] * 20 + [0.97] * 3)
    assert all(u.transition is None for u in updates[:20])
    assert any(u.transition == "out_of_control" for u in updates[20:])


@pytest.mark.parametrize("seed", [2026, 2027, 2028])
def test_no_alert_in_one_hundred_stable_sessions(seed: int) -> None:
    rng = np.random.default_rng(seed)
    updates = _chart(rng, [1.0] * 108)  # 8 baseline sessions, then 100 monitored
    assert [u.transition for u in updates if u.transition] == []
    assert all(u.zscore is not None for u in updates[8:])
