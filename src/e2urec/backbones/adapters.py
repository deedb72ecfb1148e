"""Two LoRA adapters in a row as one adapter over the first one's base.

An adapter trained over a model that is itself a base plus an adapter (E2URec's student over a
LoRA Original) changes the base by ΔW₁ + ΔW₂ with ΔWᵢ = sᵢ·Bᵢ·Aᵢ (sᵢ = alpha/r). One LoRA of
rank r₁ + r₂ with A = [A₁; A₂], B = [s₁B₁, s₂B₂] and scaling 1 is exactly that sum, so the
result is stored as one adapter over the shared base instead of a merged copy of the model. A
module only one adapter targets gets zero rows/columns for the other (a zero change).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from e2urec.errors import E2URecError

CONFIG = "adapter_config.json"
WEIGHTS = "adapter_model.safetensors"


def stack_adapters(first: Path, second: Path, out: Path) -> None:
    """Write to folder `out` one LoRA adapter equal to adapter `first` followed by `second`
    (peft folders over the same base); other files of `first` (e.g. its model record) are
    copied along."""
    from safetensors.torch import load_file, save_file

    configs = [_lora_config(folder) for folder in (first, second)]
    tensors = [load_file(folder / WEIGHTS) for folder in (first, second)]
    ranks = [c["r"] for c in configs]
    scales = [c["lora_alpha"] / c["r"] for c in configs]
    modules = sorted({k.rsplit(".lora_", 1)[0] for t in tensors for k in t})
    stacked = {}
    for module in modules:
        a_parts, b_parts = [], []
        for weights, rank, scale in zip(tensors, ranks, scales, strict=True):
            a, b = weights.get(f"{module}.lora_A.weight"), weights.get(f"{module}.lora_B.weight")
            if a is None:  # this adapter leaves the module alone: a zero change
                shape_a, shape_b = _shapes(tensors, module)
                a, b = torch.zeros(rank, shape_a), torch.zeros(shape_b, rank)
            a_parts.append(a)
            b_parts.append(b * scale)
        stacked[f"{module}.lora_A.weight"] = torch.cat(a_parts, dim=0).contiguous()
        stacked[f"{module}.lora_B.weight"] = torch.cat(b_parts, dim=1).contiguous()
    config = dict(configs[0])
    targets = {*configs[0]["target_modules"], *configs[1]["target_modules"]}
    config.update(r=sum(ranks), lora_alpha=sum(ranks), target_modules=sorted(targets))
    out.mkdir(parents=True)
    for path in first.iterdir():
        if path.name not in (CONFIG, WEIGHTS) and path.is_file():
            shutil.copy2(path, out / path.name)
    (out / CONFIG).write_text(json.dumps(config, indent=2), encoding="utf-8")
    save_file(stacked, out / WEIGHTS)


def _lora_config(folder: Path) -> dict:
    """A plain LoRA adapter's config (no rank/alpha patterns, DoRA, rsLoRA or extra modules)."""
    config = json.loads((folder / CONFIG).read_text(encoding="utf-8"))
    plain = (
        config.get("peft_type") == "LORA"
        and not config.get("rank_pattern")
        and not config.get("alpha_pattern")
        and not config.get("modules_to_save")
        and not config.get("use_dora")
        and not config.get("use_rslora")
        and config.get("bias", "none") == "none"
    )
    if not plain:
        raise E2URecError(f"the adapter in {folder} is not a plain LoRA adapter; cannot stack it")
    return config


def _shapes(tensors: list[dict[str, torch.Tensor]], module: str) -> tuple[int, int]:
    """(input, output) features of `module`, from whichever adapter targets it."""
    for weights in tensors:
        if f"{module}.lora_A.weight" in weights:
            a, b = weights[f"{module}.lora_A.weight"], weights[f"{module}.lora_B.weight"]
            return a.shape[1], b.shape[0]
    raise KeyError(module)
