"""How much slower a sweep gets beside other work: alone, beside one competing CPU-bound process, and as two
tlkit workers sharing one study, for several thread settings. Prints medians and slowdowns.

The sweep is the quickstart cut to one backbone and no source pretraining (seconds, not minutes); the competitor is a
2-thread PyTorch matrix-multiplication loop, like another training job. Every run is its own process; settings are
interleaved and repeated, and the medians are the claims.

    python benchmarks/shared_machine.py --repeats 2
"""
from __future__ import annotations

import argparse
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMPETITOR = ("import torch, sys; torch.set_num_threads(2); a = torch.randn(384, 384)\n"
              "while True:\n    a = (a @ a).tanh_()\n")
SWEEP = ["experiments/digits.py", "--set", 'backbones=["test_resnet"]', "--set", "source=None", "--set",
         "pretrained=False", "--set", 'strategies=["last_n","full_finetune"]', "--set", "train.epochs=4",
         "--trials", "3", "--repeats", "1", "--quiet"]
SETTINGS = {  # name: environment of the sweep process (and the --threads option when it has one)
    "default": {},
    "1 thread": {"TLKIT_THREADS": "1"},
    "2 threads, passive wait": {"TLKIT_THREADS": "2", "OMP_WAIT_POLICY": "PASSIVE"},
    "2 threads, active wait": {"TLKIT_THREADS": "2", "OMP_WAIT_POLICY": "ACTIVE"},
    "2 threads, short spin": {"TLKIT_THREADS": "2", "GOMP_SPINCOUNT": "10000"},
}
CASES = {"alone": (1, False), "beside": (1, True), "2 workers": (2, False)}


def run_sweeps(env: dict[str, str], workers: int, competitor: bool) -> float:
    """Wall seconds until ``workers`` sweep processes on one fresh study have all finished."""
    with tempfile.TemporaryDirectory() as tmp:
        base = {**os.environ, "TLKIT_CACHE": str(Path(tmp) / "cache"), "HF_HUB_OFFLINE": "1", **env}
        for key in ("OMP_WAIT_POLICY", "TLKIT_THREADS", "GOMP_SPINCOUNT"):
            if key not in env:
                base.pop(key, None)
        other = subprocess.Popen([sys.executable, "-c", COMPETITOR]) if competitor else None
        try:
            time.sleep(1.0 if competitor else 0.0)  # the competitor is busy before the sweep starts
            start = time.perf_counter()
            # Several workers the way a user starts them on one machine: --workers N (one study, N processes).
            procs = [subprocess.Popen([sys.executable, "-m", "tlkit.sweep", *SWEEP, "--out", str(Path(tmp) / "out"),
                                       *(["--workers", str(workers)] if workers > 1 else [])], cwd=ROOT, env=base,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)]
            for p in procs:
                _, err = p.communicate(timeout=3600)
                if p.returncode != 0:
                    raise RuntimeError(f"sweep failed: {err[-2000:]}")
            return time.perf_counter() - start
        finally:
            if other is not None:
                other.kill()
                other.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--settings", nargs="*", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--cases", nargs="*", default=list(CASES), choices=list(CASES))
    args = parser.parse_args()
    cases = [(name, *CASES[case]) for name in args.settings for case in args.cases]
    times: dict[tuple[str, int, bool], list[float]] = {c: [] for c in cases}
    for r in range(args.repeats):  # interleaved: every case once per round
        for case in cases:
            times[case].append(run_sweeps(SETTINGS[case[0]], case[1], case[2]))
            print(f"round {r + 1}: {case[0]:<26} workers={case[1]} competitor={case[2]!s:<5} "
                  f"{times[case][-1]:7.1f} s", flush=True)
    print(f"\nmedians of {args.repeats} ({os.cpu_count()} CPUs); the same sweep each time")
    print(f"{'setting':<26} {'alone':>8} {'beside a 2-thread job':>22} {'slowdown':>9} {'2 workers':>10}")
    first = statistics.median(times[(args.settings[0], 1, False)]) if "alone" in args.cases else math.nan
    print(f"{'':<26} {'':>8} {'':>22} {'':>9} {'':>10} alone vs {args.settings[0]}")
    for name in args.settings:
        alone, contended, two = (statistics.median(times[(name, *CASES[c])]) if c in args.cases else math.nan
                                 for c in CASES)
        print(f"{name:<26} {alone:7.1f}s {contended:21.1f}s {contended / alone:8.2f}x {two:9.1f}s "
              f"{alone / first:8.2f}x")


if __name__ == "__main__":
    main()
