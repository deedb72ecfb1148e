"""What a LoRA run and a deletion write to disk, against the base they share.

For a run trained with `--finetune lora` over a pretrained base (stored as its adapter), prints
and writes as JSON: the base's weight bytes (its converted or downloaded safetensors), the
run's model folder bytes and the ratio; then deploys the run to a temporary folder, serves one
deletion request with each method of --methods (one user of the forget split each, in turn)
and records the bytes of every new version folder and what its model folder holds.

    .venv/bin/python benchmarks/bench_storage.py RUN DATA [--methods e2urec,neggrad] \
        [--sets max_steps=4] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from e2urec import api
from e2urec.backbones import create_recommender, holds_adapter
from e2urec.data.dataset import load_split
from e2urec.runs import MODEL_DIR, read_run_manifest


def folder_bytes(folder: Path) -> int:
    """Bytes of every file under `folder`."""
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def megabytes(n: int) -> float:
    """`n` bytes in MB (10^6), to 0.1."""
    return round(n / 1e6, 1)


def base_bytes(run: Path) -> tuple[str, int]:
    """(base spec, bytes of its safetensors weights) of an adapter run."""
    record = json.loads((run / MODEL_DIR / "e2urec_backbone.json").read_text(encoding="utf-8"))
    spec = record["base"]["spec"]
    model = create_recommender(spec, [], record["base"]["init_seed"]).model
    folder = Path(model.name_or_path)
    return spec, sum(p.stat().st_size for p in folder.glob("*.safetensors"))


def deletions(run: Path, data: Path, methods: list[str], sets: list[str]) -> list[dict]:
    """One single-user request per method in a fresh deployment of `run`: bytes written."""
    users = list(dict.fromkeys(load_split(data, "forget")["user_id"]))
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        dep = Path(tmp) / "dep"
        api.deploy(run, data, dep)
        for method, user in zip(methods, users, strict=False):
            began = time.perf_counter()
            result = api.forget(dep, [int(user)], method=method, sets=sets)
            version = dep / "versions" / result.entry["version"]
            out.append(
                {
                    "method": method,
                    "version_mb": megabytes(folder_bytes(version)),
                    "adapter": holds_adapter(version / MODEL_DIR),
                    "wall_s": round(time.perf_counter() - began, 1),
                }
            )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="a run trained with --finetune lora")
    parser.add_argument("data", type=Path, help="the prepared data it was trained on")
    parser.add_argument("--methods", default="e2urec,neggrad", help="one deletion each, in turn")
    parser.add_argument("--sets", default="", help="comma-separated method settings")
    parser.add_argument("--json", type=Path, help="write the numbers to this file")
    args = parser.parse_args()
    read_run_manifest(args.run)
    spec, base = base_bytes(args.run)
    model = folder_bytes(args.run / MODEL_DIR)
    sets = [s for s in args.sets.split(",") if s]
    result = {"base": spec, "base_mb": megabytes(base), "run_model_mb": megabytes(model)}
    result["base_over_run"] = round(base / model, 1)
    print(f"base {spec}: {result['base_mb']} MB; run model folder {result['run_model_mb']} MB "
          f"(1/{result['base_over_run']:.0f} of the base)")  # fmt: skip
    result["deletions"] = deletions(args.run, args.data, args.methods.split(","), sets)
    for row in result["deletions"]:
        kind = "an adapter" if row["adapter"] else "a whole model"
        print(f"  {row['method']}: wrote {row['version_mb']} MB ({kind}), "
              f"{row['wall_s']} s")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
