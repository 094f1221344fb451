"""QC benchmark: wall time and memory peak of one anatomical and one functional pass on one core.

    python benchmarks/qc.py            # 1 mm T1w 256x256x176 and BOLD 64x64x36x200
    python benchmarks/qc.py --quick    # small volumes, seconds (a test runs this)
    python benchmarks/qc.py --repeat 3 --cases anatomical --no-tracemalloc

Cases: `qc_service.anatomical.measure_anatomical` on a synthetic 1 mm head built from the
MNI152 2009 template (`tests/unit/qc/factories.py`: Rician noise, a smooth bias field) and
`qc_service.metrics.functional.functional_iqms` on a synthetic BOLD run with drifting motion
(`tests/unit/qc_functional/factories.py`). The parent builds the inputs and saves them; each
case runs in a fresh child process pinned to one CPU with every thread pool (OpenMP,
OpenBLAS, MKL, SimpleITK) set to one thread before the libraries load, so its timings and
its ru_maxrss are its own. Each child prints a `RESULT case=... seconds=... cpu_seconds=...
tracemalloc_peak_mb=... maxrss_delta_mb=... maxrss_mb=...` line (with `--repeat N`, the
fastest of N timed runs in the same child); the parent prints a table with the targets.

Memory, two figures: `tracemalloc_peak_mb` is the peak of Python/numpy allocations traced by
tracemalloc during a second, untimed run (SimpleITK's C++ buffers are not traced);
`maxrss_delta_mb` is the process' resident high-water mark after the timed run
(`resource.getrusage(RUSAGE_SELF).ru_maxrss`) minus its resident size (VmRSS) once the input
was loaded: what the run added, SimpleITK's buffers included (an upper bound if the imports
set a higher mark, never the case for these sizes); `maxrss_mb` is the absolute mark.

No peer: the reference (MRIQC) needs ANTs, FSL and AFNI, which cannot be installed here, so
no ratio against it is reported rather than one against an invented stand-in.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                    "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS")
TARGETS_S = {"anatomical": 15.0, "functional": 30.0}
PEER_NOTE = ("peer: none. MRIQC, the reference, needs ANTs/FSL/AFNI, which cannot be "
             "installed here; no ratio is reported.")


def _single_threaded_env() -> dict[str, str]:
    return {**os.environ, **dict.fromkeys(THREAD_VARIABLES, "1"),
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}


# -- inputs (parent) -----------------------------------------------------------------------


def build_inputs(folder: Path, *, quick: bool) -> dict[str, str]:
    import numpy as np

    sys.path.insert(0, str(REPO))
    from tests.unit.qc.factories import synthetic_head
    from tests.unit.qc_functional.factories import bold_run

    if quick:
        head = synthetic_head(step=2, sigma=20.0, bias_amplitude=0.15, seed=1)
        frames = 20
    else:  # the template is 1 mm: step 1, padded/cropped to a typical sagittal 1 mm T1w grid
        head = synthetic_head(step=1, sigma=20.0, bias_amplitude=0.15, seed=1,
                              shape=(256, 256, 176))
        frames = 200
    np.save(folder / "t1w.npy", head.image)
    np.save(folder / "t1w_affine.npy", head.affine)
    rng = np.random.default_rng(6)
    motion = np.cumsum(rng.normal(0, 0.05, (frames, 6)), axis=0)
    motion[:, 3:] = np.deg2rad(motion[:, 3:])
    np.save(folder / "bold.npy", bold_run(motion, noise_sigma=8.0))
    return {"anatomical": "x".join(map(str, head.image.shape)),
            "functional": f"64x64x36x{frames}"}


# -- one case (child) ----------------------------------------------------------------------


def run_case(case: str, folder: Path, *, tracemalloc_run: bool, repeat: int) -> None:
    for name in THREAD_VARIABLES:
        os.environ[name] = "1"
    cpu = sorted(os.sched_getaffinity(0))[0]
    os.sched_setaffinity(0, {cpu})
    import resource
    import time
    import tracemalloc

    import numpy as np
    import SimpleITK

    sitk: Any = SimpleITK  # SWIG methods are untyped
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    from qc_service.anatomical import measure_anatomical
    from qc_service.metrics.functional import functional_iqms
    from services.volume import Volume

    if case == "anatomical":
        volume = Volume(np.load(folder / "t1w.npy"), np.load(folder / "t1w_affine.npy"), None)

        def once() -> None:
            measure_anatomical(volume)
    else:
        bold = np.load(folder / "bold.npy")

        def once() -> None:
            functional_iqms(bold, zooms=(3.0, 3.0, 3.5), repetition_time_s=2.0)

    rss_before_kb = _current_rss_kb()
    walls, cpus = [], []
    for _ in range(repeat):
        wall, cpu_start = time.perf_counter(), time.process_time()
        once()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu_start)
    best = min(range(repeat), key=walls.__getitem__)
    wall, cpu_s = walls[best], cpus[best]
    peak_rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rss_delta_mb = max(0, peak_rss_kb - rss_before_kb) / 1024
    traced = "nan"
    if tracemalloc_run:
        tracemalloc.start()
        once()
        traced = f"{tracemalloc.get_traced_memory()[1] / 2**20:.0f}"
        tracemalloc.stop()
    print(f"RESULT case={case} seconds={wall:.2f} cpu_seconds={cpu_s:.2f} "
          f"tracemalloc_peak_mb={traced} maxrss_delta_mb={rss_delta_mb:.0f} "
          f"maxrss_mb={peak_rss_kb / 1024:.0f} "
          f"threads={sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()} cpu={cpu}",
          flush=True)


def _current_rss_kb() -> int:
    """VmRSS now (not the high-water mark, which the imports may have set higher)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


# -- parent --------------------------------------------------------------------------------


def _parse(line: str) -> dict[str, str]:
    return dict(field.split("=", 1) for field in line.split()[1:])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small volumes, seconds")
    parser.add_argument("--cases", default="anatomical,functional")
    parser.add_argument("--no-tracemalloc", action="store_true",
                        help="skip the second, traced run (memory peak from ru_maxrss only)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="timed runs per case; the fastest is reported (shared machines)")
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--inputs", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        run_case(args.case, Path(args.inputs), tracemalloc_run=not args.no_tracemalloc,
                 repeat=args.repeat)
        return 0

    cases = [c for c in args.cases.split(",") if c]
    rows = []
    with tempfile.TemporaryDirectory(prefix="harmonet-qc-bench-") as tmp:
        shapes = build_inputs(Path(tmp), quick=args.quick)
        for case in cases:
            command = [sys.executable, __file__, "--case", case, "--inputs", tmp,
                       "--repeat", str(max(1, args.repeat))]
            if args.no_tracemalloc:
                command.append("--no-tracemalloc")
            done = subprocess.run(command, env=_single_threaded_env(), capture_output=True,
                                  text=True, check=False)
            sys.stdout.write(done.stdout)
            if done.returncode != 0:
                sys.stderr.write(done.stderr)
                return done.returncode
            result = _parse(next(line for line in done.stdout.splitlines()
                                 if line.startswith("RESULT ")))
            rows.append((case, shapes[case], result))
    print_table(rows, quick=args.quick)
    return 0


def print_table(rows: list[tuple[str, str, dict[str, str]]], *, quick: bool) -> None:
    print()
    print("one core (sched_setaffinity, 1 thread per pool); memory: tracemalloc peak of a "
          "second run / ru_maxrss growth")
    header = (f"{'case':<11} {'input':<14} {'target':>8} {'wall s':>8} {'cpu s':>7} "
              f"{'tracemalloc MB':>15} {'maxrss+ MB':>11} {'maxrss MB':>10}  result")
    print(header)
    print("-" * len(header))
    for case, shape, r in rows:
        seconds = float(r["seconds"])
        target = TARGETS_S[case]
        verdict = "n/a (quick)" if quick else ("pass" if seconds <= target else "FAIL")
        target_text = "-" if quick else f"<= {target:.0f}"
        print(f"{case:<11} {shape:<14} {target_text:>8} {seconds:>8.2f} "
              f"{float(r['cpu_seconds']):>7.2f} {r['tracemalloc_peak_mb']:>15} "
              f"{r['maxrss_delta_mb']:>11} {r['maxrss_mb']:>10}  {verdict}")
    contended = [case for case, _, r in rows
                 if float(r["cpu_seconds"]) < 0.85 * float(r["seconds"])]
    if contended:
        print(f"note: {', '.join(contended)}: cpu time well below wall time, the pinned core "
              f"was shared (load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs); "
              "the cpu column is the one-core cost, try --repeat 3")
    print(PEER_NOTE)


if __name__ == "__main__":
    raise SystemExit(main())
