"""The eigenvalue spectrum of a stored EK-FAC curvature against influence's damping.

Influence solves (F + λI)⁻¹ b per layer in the EK-FAC eigenbasis; where every eigenvalue of F is
far below λ the solve is b / λ, one gradient step. This script reads a curvature file that
`unlearn --method influence` stored (under the Original's run folder, `curvature/ekfac-*.safetensors`)
and prints the quantiles of its corrected eigenvalues, the largest, and the share above each
damping, so "does the curvature matter at this damping?" is a measurement.

    .venv/bin/python benchmarks/curvature_spectrum.py RUN/curvature/ekfac-....safetensors \
        [--damping 0.3,0.03] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from e2urec.methods.curvature import EKFAC

QUANTILES = (0.5, 0.9, 0.99, 0.999)


def spectrum(path: Path, dampings: list[float]) -> dict:
    """Eigenvalue statistics of the curvature in `path` (its linear layers' Λ and diagonals)."""
    curvature = EKFAC.load(path)
    values = [lam.flatten() for _, _, lam, _ in curvature.linear.values()]
    values += [d.flatten() for d in curvature.diag.values()]
    flat = torch.cat(values).double()
    sample = flat[torch.randperm(len(flat), generator=torch.Generator().manual_seed(0))[:1_000_000]]
    return {
        "file": path.name,
        "rows": curvature.info.get("rows"),
        "settings": curvature.info.get("settings"),
        "layers": len(curvature.linear),
        "eigenvalues": len(flat),
        "max": float(flat.max()),
        "quantiles": {str(q): float(torch.quantile(sample, q)) for q in QUANTILES},
        "share_above": {str(d): float((flat > d).double().mean()) for d in dampings},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("curvature", type=Path, help="an EK-FAC file stored by influence")
    parser.add_argument("--damping", default="0.3,0.03,0.003", help="dampings to compare with")
    parser.add_argument("--json", type=Path, help="write the numbers to this file")
    args = parser.parse_args()
    result = spectrum(args.curvature, [float(d) for d in args.damping.split(",")])
    print(
        f"{result['layers']} layers, {result['eigenvalues']:,} eigenvalues from "
        f"{result['rows']} rows; max {result['max']:.3g}"
    )
    print("quantiles: " + ", ".join(f"{q}: {v:.3g}" for q, v in result["quantiles"].items()))
    print(
        "share above damping: "
        + ", ".join(f"{d}: {v:.2%}" for d, v in result["share_above"].items())
    )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
