"""`e2urec import`: a recommender trained elsewhere as a run that `unlearn`, `eval` and `deploy`
accept.

A Hugging Face checkpoint (any backbone spec of a pretrained family: `causal:PATH_OR_ID`,
`t5:...`, `gguf:FILE`, `smollm2`) becomes a run holding the whole model; with `adapter`, a PEFT
LoRA adapter folder trained over that checkpoint becomes a run holding the adapter only, over
the base it names by spec and weight digest (as `e2urec train --finetune lora` stores one). The
run records the prepared data folder it was trained on: the forget and retain splits of that
folder are what unlearning and the Retrain reference use.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from e2urec.artifacts import check_output, staged_folder
from e2urec.errors import E2URecError, first_line
from e2urec.runs import MODEL_DIR


def import_run(
    data: str | Path,
    backbone: str,
    out: str | Path,
    *,
    adapter: str | Path | None = None,
    max_length: int = 512,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write run `out` from checkpoint `backbone` (plus a PEFT `adapter` over it) trained on
    the prepared folder `data`; returns the run manifest. Everything is checked before `out`
    is written: the data, the spec (a pretrained family), the adapter and the answer tokens."""
    from e2urec.backbones import create_recommender, parse_spec, save_recommender
    from e2urec.data.dataset import read_manifest
    from e2urec.train.runner import finish_run

    data = Path(data).absolute()
    read_manifest(data)
    check_output(out, overwrite)  # refused before the checkpoint is loaded
    family, _ = parse_spec(backbone)
    if not family.pretrained:
        raise E2URecError(
            f"backbone {backbone!r} is built from a config, not a checkpoint; import a trained "
            "model with causal:PATH, t5:PATH, gguf:FILE or smollm2"
        )
    recommender = create_recommender(backbone, [], 0, max_length=max_length)
    if adapter is not None:
        recommender.model = _with_adapter(recommender.model, Path(adapter))
    fields = {
        "format": "single",
        "kind": "original",
        "trained_on": "train",
        "backbone": backbone,
        "family": family.name,
        "finetune": "lora" if adapter is not None else "full",
        "init_seed": 0,
        "data_dir": str(data),
        "imported_from": {"backbone": backbone, "adapter": str(adapter) if adapter else None},
    }
    with staged_folder(out, overwrite=overwrite) as stage:
        save_recommender(recommender, stage / MODEL_DIR)
        manifest = finish_run(stage, fields)
    return manifest


def _with_adapter(model: Any, adapter: Path) -> Any:
    """`model` carrying the PEFT LoRA adapter in folder `adapter` (one clear error otherwise)."""
    from peft import PeftConfig, PeftModel

    if not (adapter / "adapter_config.json").is_file():
        raise E2URecError(f"not a PEFT adapter folder (no adapter_config.json): {adapter}")
    try:
        config = PeftConfig.from_pretrained(adapter)
        if config.peft_type != "LORA":
            raise E2URecError(f"adapter {adapter} is {config.peft_type}, not LoRA")
        return PeftModel.from_pretrained(model, adapter)
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        raise E2URecError(f"cannot apply the adapter in {adapter}: {first_line(exc)}") from None
