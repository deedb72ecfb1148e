"""Influence's cached curvature (EK-FAC) against the exact solver (CG with Hessian-vector
products) on one Original: the cosine and norm ratio of their Δθ, CG's residual and iterations,
and the time of each, for each damping given.

    OMP_NUM_THREADS=1 python benchmarks/bench_influence.py --original RUN --data DATA \
        --work /tmp/solvers --damping 0.1 --damping 1 [--set params=last:1]
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
from pathlib import Path

from safetensors.torch import load_file

from e2urec.unlearn import unlearn


def delta(run: Path, original: Path) -> dict:
    before = load_file(str(original / "model" / "model.safetensors"))
    after = load_file(str(run / "model" / "model.safetensors"))
    return {k: (after[k] - before[k]).double() for k in before}


def compare(a: dict, b: dict) -> tuple[float, float]:
    """Cosine of a and b, and ‖a‖ / ‖b‖."""
    inner = sum(float((a[k] * b[k]).sum()) for k in a)
    na = math.sqrt(sum(float((t**2).sum()) for t in a.values()))
    nb = math.sqrt(sum(float((t**2).sum()) for t in b.values()))
    return inner / max(na * nb, 1e-300), na / max(nb, 1e-300)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--original", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--work", required=True)
    parser.add_argument("--damping", type=float, action="append", required=True)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--cg", action="append", default=["cg_iters=60", "cg_tol=0.01"])
    args = parser.parse_args()
    original, work = Path(args.original), Path(args.work)
    for damping in args.damping:
        sets = [*args.set, f"damping={damping}"]
        runs = {}
        for solver, extra in (("ekfac", []), ("cg", args.cg)):
            out = work / f"{solver}-{damping}"
            manifest = unlearn(
                "influence",
                original,
                args.data,
                out,
                [*sets, f"solver={solver}", *extra],
                overwrite=True,
            )
            runs[solver] = (out, manifest["influence"])
        cos, ratio = compare(delta(runs["ekfac"][0], original), delta(runs["cg"][0], original))
        cg = runs["cg"][1]["solver"]
        print(
            json.dumps(
                {
                    "damping": damping,
                    "sets": args.set,
                    "cosine_ekfac_cg": round(cos, 4),
                    "norm_ekfac_over_cg": round(ratio, 4),
                    "cg": {
                        k: cg.get(k)
                        for k in (
                            "iterations",
                            "residual",
                            "converged",
                            "negative_curvature",
                            "s",
                            "hvp_rows",
                        )
                    },
                    "ekfac_request_s": runs["ekfac"][1]["request_s"],
                    "ekfac_build_s": runs["ekfac"][1]["curvature_build_s"],
                    "cg_request_s": runs["cg"][1]["request_s"],
                }
            ),
            flush=True,
        )
        for out, _ in runs.values():
            shutil.rmtree(out)


if __name__ == "__main__":
    main()
