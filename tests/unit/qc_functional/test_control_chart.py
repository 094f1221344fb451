"""Phantom stability control charts: detection delay, false alarms, idempotency, reset, JSON.

Session noise: a stable scanner's SFNR varies ~0.5 % (CV) from session to session; the
series below is SFNR 200 +- 1 (Gaussian), a 3 % drop is 6 of those sigmas.
"""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from qc_service.control_chart import ChartParameters, ChartState, ChartUpdate, reset, update

SFNR, SESSION_CV, BASELINE = 200.0, 0.005, 8


def run_chart(values: np.ndarray, state: ChartState | None = None,
              prefix: str = "s") -> tuple[ChartState, list[ChartUpdate]]:
    updates = []
    for index, value in enumerate(values):
        result = update(state, float(value), baseline_sessions=BASELINE,
                        session_id=f"{prefix}{index}")
        state = result.state
        updates.append(result)
    assert state is not None
    return state, updates


def sessions(seed: int, count: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(SFNR, SFNR * SESSION_CV, count)


def transitions(updates: list[ChartUpdate]) -> list[tuple[int, str]]:
    return [(i, u.transition) for i, u in enumerate(updates) if u.transition is not None]


def test_no_zscore_during_the_baseline_then_frozen() -> None:
    state, updates = run_chart(sessions(0, BASELINE + 1))
    assert all(u.zscore is None for u in updates[:BASELINE])
    assert updates[BASELINE].zscore is not None
    assert state.centre is not None and len(state.baseline) == BASELINE


def test_no_alert_in_100_stable_sessions_over_20_seeds() -> None:
    false_alarms = 0
    for seed in range(20):
        _, updates = run_chart(sessions(seed, BASELINE + 100))
        false_alarms += len(transitions(updates))
    assert false_alarms == 0


def test_a_3_percent_sfnr_drop_is_caught_within_3_sessions_over_20_seeds() -> None:
    for seed in range(20):
        values = sessions(seed, BASELINE + 30)
        values[BASELINE + 20:] *= 0.97
        _, updates = run_chart(values)
        first = transitions(updates)[0]
        assert first[1] == "out_of_control"
        assert BASELINE + 20 <= first[0] < BASELINE + 23, f"seed {seed}: {first}"
        assert updates[first[0]].zscore is not None and updates[first[0]].zscore < -3


def test_back_in_control_when_the_scanner_recovers() -> None:
    values = sessions(1, BASELINE + 40)
    values[BASELINE + 10: BASELINE + 15] *= 0.97
    _, updates = run_chart(values)
    kinds = [kind for _, kind in transitions(updates)]
    assert kinds[:2] == ["out_of_control", "back_in_control"]
    back = transitions(updates)[1][0]
    assert back < BASELINE + 15 + 10  # within ~10 sessions of the repair
    assert len(kinds) == 2


def test_a_rise_is_tracked_too() -> None:
    values = sessions(2, BASELINE + 10)
    values[BASELINE + 5:] *= 1.03
    _, updates = run_chart(values)
    assert transitions(updates)[0][1] == "out_of_control"


def test_a_redelivered_session_does_not_count_twice() -> None:
    values = sessions(3, BASELINE + 5)
    values[BASELINE + 2:] *= 0.9
    state, updates = run_chart(values)
    alert = next(i for i, u in enumerate(updates) if u.transition == "out_of_control")
    again = update(state, 0.0, baseline_sessions=BASELINE, session_id=f"s{alert}")
    assert again.state == state
    # the first outcome comes back, so a handler that crashed before publishing can publish
    assert again.transition == "out_of_control" and again.zscore == updates[alert].zscore
    during_baseline = update(None, 1.0, session_id="a")
    assert update(during_baseline.state, 2.0, session_id="a").state.baseline == (1.0,)


def test_reset_after_a_service_visit_starts_a_new_baseline() -> None:
    values = sessions(4, BASELINE + 5)
    values[BASELINE + 2:] *= 0.95
    state, _ = run_chart(values)
    assert state.out_of_control
    fresh = reset(state)
    assert fresh.centre is None and fresh.baseline == () and not fresh.out_of_control
    assert fresh.epoch == state.epoch + 1
    # the new level (after the visit) becomes the new baseline: no alert on it
    after, updates = run_chart(sessions(5, BASELINE + 30) * 0.95, state=fresh, prefix="v")
    assert transitions(updates) == []
    assert after.centre is not None and abs(after.centre - 0.95 * SFNR) < 2


def test_non_finite_values_are_refused() -> None:
    import pytest

    with pytest.raises(ValueError, match="finite"):
        update(None, float("nan"), session_id="x")


finite = st.floats(allow_nan=False, allow_infinity=False, min_value=-1e6, max_value=1e6)


@given(values=st.lists(finite, min_size=0, max_size=20), n=st.integers(2, 10),
       lam=st.floats(0.05, 0.5))
def test_state_json_round_trip(values: list[float], n: int, lam: float) -> None:
    state = ChartState(baseline_sessions=n, parameters=ChartParameters(ewma_lambda=lam))
    for index, value in enumerate(values):
        state = update(state, value, baseline_sessions=n, session_id=f"id-{index}").state
        assert ChartState.from_json(state.to_json()) == state
    assert ChartState.from_json(reset(state).to_json()) == reset(state)
