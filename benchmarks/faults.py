"""Fault-injection benchmark: many rounds of what `tests/faults` runs a few of.

    python benchmarks/faults.py                       # 20 SIGKILL rounds, 500 instances
    python benchmarks/faults.py --rounds 50 --seed 7
    python benchmarks/faults.py --window stable       # kills only before the publish
    python benchmarks/faults.py --quick               # 1 round, 100 instances (a test runs this)

SIGKILL rounds (`tests/faults/kill_scenario.py`): `harmonet up` is killed with SIGKILL at a
random point while DCMTK `storescu -v` pushes the study or after the push, restarted, and
the push repeated. Kill points are uniform over the push and, after it, the window: until
the reference run's registry processed the study (`processed`, the default: kills land
before the publish, during it and while compliance, QC, harmonization and the registry
work) or only the stable time before the publish (`stable`). Each round names the phase
its kill landed in (push / stable / pipeline). Per round: instances acknowledged (Success)
before the kill that are not on disk (lost), stored files whose bytes differ from an
uninterrupted reference run (differing), temporary or quarantined files (leftovers), and
after the re-push: instances missing, `study.received` / compliance / QC event ids per
study revision other than exactly one, and the registry's own rows (one per revision, per
series, one `study.processed`): `registry_violations`.

Prints one `ROUND ...` line per round and a final `RESULT ...` line; exits 1 when any
round broke a guarantee. Needs DCMTK (`storescu`).
"""

from __future__ import annotations

import argparse
import random
import signal
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--instances", type=int, default=500)
    parser.add_argument("--seed", type=int, default=8)
    parser.add_argument("--window", choices=("processed", "stable"), default="processed",
                        help="after the push, kill until the study is processed (default) "
                        "or only before it is published")
    parser.add_argument("--quick", action="store_true",
                        help="1 round of 100 instances")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.instances = 1, 100
    # SIGTERM unwinds like Ctrl-C, so the `harmonet up` children are stopped too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    sys.path.insert(0, str(REPO))
    from tests.faults.kill_scenario import (
        draw_kill_point,
        expected_keys,
        kill_round,
        reference_run,
        summary,
        write_kill_study,
    )

    work = Path(tempfile.mkdtemp(prefix="harmonet-faults-"))
    started = time.monotonic()
    files = write_kill_study(work / "study", instances=args.instances)
    keys = expected_keys(files)
    reference = reference_run(work / "study", work / "reference")
    if sorted(reference.digests) != sorted(keys.values()):
        print(f"reference run stored {len(reference.digests)} of {len(keys)} instances")
        return 1
    rng = random.Random(args.seed)
    rounds, failures = [], 0
    for number in range(args.rounds):
        point = draw_kill_point(rng, reference, window=args.window)
        result = kill_round(work / "study", work / f"round-{number}", reference=reference,
                            keys=keys, kill_point=point)
        rounds.append(result)
        failures += not result.ok
        print(f"ROUND {number} killed_after_s={point.seconds:.2f} after={point.after} "
              f"phase={result.phase} acknowledged={result.acknowledged} "
              f"on_disk={result.stored_at_kill} lost={len(result.lost)} "
              f"differing={len(result.differing)} leftovers={len(result.leftovers)} "
              f"missing_after={result.final_missing} revisions={result.revisions} "
              f"restarted={not result.restart_error} "
              f"pipeline_complete={not result.pipeline_error} "
              f"registry_violations={len(result.registry)} ok={result.ok}", flush=True)
        if not result.ok:
            print(f"  details: {result}", flush=True)
    print(summary(rounds, args.instances))
    print(f"RESULT scenario=sigkill rounds={len(rounds)} instances={args.instances} "
          f"acknowledged={sum(r.acknowledged for r in rounds)} "
          f"lost={sum(len(r.lost) for r in rounds)} failed_rounds={failures} "
          f"seconds={time.monotonic() - started:.0f} window={args.window} "
          f"reference_push_s={reference.push_seconds:.1f} "
          f"reference_processed_s={reference.processed_seconds:.1f}")
    if not args.keep:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    else:
        print(f"work directory kept: {work}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
