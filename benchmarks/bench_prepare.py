"""Time `e2urec data prepare` on 1,000,000 synthetic ratings in MovieLens-1M format.

The ratings come from `e2urec.data.synthetic` (ML-1M sizes: 6,040 users, 3,706 items), written as
ML-1M `.dat` files, then read and prepared with the paper's protocol twice: --last-n 100000
(the paper) and all samples. Prints seconds per phase; the target is at most 60 s per run.

    .venv/bin/python benchmarks/bench_prepare.py [--ratings 1000000]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from e2urec.data.prepare import PrepareConfig, prepare
from e2urec.data.synthetic import generate, write_ml1m


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ratings", type=int, default=1_000_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw"
        start = time.perf_counter()
        write_ml1m(generate(n_users=6040, n_items=3706, n_ratings=args.ratings, seed=0), raw)
        print(f"generate + write {args.ratings:,} ratings: {time.perf_counter() - start:6.1f} s")
        for label, last_n in (("last-n 100000", 100_000), ("all samples", None)):
            config = PrepareConfig(dataset="ml-1m", raw=str(raw), out=f"{tmp}/out", last_n=last_n)
            start = time.perf_counter()
            result = prepare(config, overwrite=True)
            seconds = time.perf_counter() - start
            kept = result.manifest["counts"]["samples_kept"]
            print(f"read + prepare, {label:13s}: {seconds:6.1f} s ({kept:,} samples)")


if __name__ == "__main__":
    main()
