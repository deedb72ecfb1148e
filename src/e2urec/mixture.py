"""APA's run format: one frozen base, K LoRA adapters, mixed per row in one forward pass.

Run format "apa" (loaded by `runs.load_run_model`; written by `e2urec.methods.apa`):
- `base/`: the frozen base (save_recommender; a seeded LM-head initialisation included);
- `adapters/shard-K/`: one PEFT adapter folder per shard (adapter_config.json +
  adapter_model.safetensors);
- `partition.safetensors` (the K-means centres) and `partition.json` (train row id → shard);
- `validation.safetensors`: the valid rows' representations and each adapter's log-loss on them;
- manifest "adapters" (name, path, samples, forget_samples, retrained, sha256) and
  "aggregation" (tau, neighbours).

A row's representation is the frozen base's last hidden state (or, with the aggregation's
`represent_layers`, the output of its first blocks: a cheaper pass) mean-pooled over its prompt
tokens (unit length). Its weights ω: the `neighbours` valid rows nearest by cosine, each
adapter's mean log-loss on them, softmax(−tau · error). One forward pass adds, at every
LoRA-targeted linear layer, Σ_k ω_{b,k}·scale_k·B_k(A_k(x_b)) (the K adapters stacked: two
matmuls of rank K·r) and replaces each module the adapters train whole (PEFT modules_to_save)
by Σ_k ω_{b,k}·f_k(x_b). Scoring a row costs one pass of the base trunk without its LM head
(the representation) plus one mixed pass, never K passes.
"""

from __future__ import annotations

import contextlib
import copy
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from e2urec.backbones import Recommender, block_lists, load_recommender

BASE_DIR = "base"
ADAPTERS_DIR = "adapters"
PARTITION = "partition.safetensors"
ASSIGNMENT = "partition.json"
VALIDATION = "validation.safetensors"
# causal model types whose logits are exactly `<head>(last hidden state)`: the mixed pass runs
# that head at the answer position only
ANSWER_HEADS = {"bert": "cls", "llama": "lm_head"}


class _Stop(Exception):
    """Raised by the hook that ends a truncated representation pass, carrying its hidden state."""

    def __init__(self, hidden: torch.Tensor) -> None:
        super().__init__()
        self.hidden = hidden


def trunk_hidden(trunk: nn.Module, depth: int | None, **inputs: torch.Tensor) -> torch.Tensor:
    """The last hidden state of `trunk` (an encoder or a causal trunk without its head), or with
    `depth` the output of its first `depth` blocks: the pass stops there (the blocks after it
    never run); depth 0: the input (token) embeddings, no block run. Only the calling thread's
    pass stops (another thread may score the model)."""
    if depth == 0:  # no block: the input embeddings
        return trunk.get_input_embeddings()(inputs["input_ids"])
    blocks = block_lists(trunk)
    if depth is None or not blocks or depth >= len(blocks[0][1]):
        return trunk(**inputs).last_hidden_state
    caller = threading.get_ident()

    def stop(module: nn.Module, args: tuple, output: Any) -> None:
        if threading.get_ident() == caller:
            raise _Stop(output[0] if isinstance(output, tuple) else output)

    handle = blocks[0][1][depth - 1].register_forward_hook(stop)
    try:
        return trunk(**inputs).last_hidden_state
    except _Stop as stopped:
        return stopped.hidden
    finally:
        handle.remove()


def trunk_of(recommender: Recommender, model: nn.Module) -> nn.Module:
    """The part of `model` a representation runs: the encoder for seq2seq, the trunk without
    the LM head for causal models."""
    return model.get_encoder() if recommender.kind == "seq2seq" else model.base_model


@torch.no_grad()
def represent(
    recommender: Recommender,
    model: nn.Module,
    batch: dict[str, Any],
    depth: int | None = None,
) -> torch.Tensor:
    """[B, H] unit vectors: `model`'s last hidden state (with `depth`: its first `depth`
    blocks' output) mean-pooled over each row's prompt tokens (the encoder for seq2seq; the
    trunk without LM head for causal models, whose causal mask keeps the prompt positions blind
    to the answer)."""
    ids, mask = batch["input_ids"], batch["attention_mask"]
    hidden = trunk_hidden(trunk_of(recommender, model), depth, input_ids=ids, attention_mask=mask)
    if recommender.kind != "seq2seq":
        positions = torch.arange(ids.shape[1], device=ids.device)
        mask = mask * (positions.unsqueeze(0) < batch["answer_start"].unsqueeze(1))
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)
    return F.normalize(pooled.float(), dim=-1)


class AdapterMixture:
    """A loaded APA run: the base model, and hooks that mix the K adapters per row during a
    mixed pass (`mixed_logits`; between passes the base is a plain model).

    `layers`: module path → (A [K·r, in], B·scale [out, K·r]) of the LoRA-targeted linears;
    `whole`: module path → the K trained copies of a module trained whole. `valid_repr` [Nv, H]
    and `valid_error` [K, Nv] give the weights (None while the errors are being computed);
    `represent_layers`: the base's blocks a row's representation runs through (None: all).
    """

    def __init__(
        self,
        recommender: Recommender,
        layers: dict[str, tuple[torch.Tensor, torch.Tensor]],
        whole: dict[str, list[nn.Module]],
        valid_repr: torch.Tensor | None = None,
        valid_error: torch.Tensor | None = None,
        tau: float = 1000.0,
        neighbours: int = 20,
        represent_layers: int | None = None,
    ) -> None:
        self.recommender = recommender
        self.model = recommender.model.eval()
        self.layers = dict(layers)
        self.whole = {path: [m.eval() for m in copies] for path, copies in whole.items()}
        self.valid_repr, self.valid_error = valid_repr, valid_error
        self.tau, self.neighbours = tau, neighbours
        self.represent_layers = represent_layers
        self._local = threading.local()  # ω of the mixed pass running in this thread

    @property
    def _omega(self) -> torch.Tensor | None:
        return getattr(self._local, "omega", None)

    @contextlib.contextmanager
    def _mixing(self, omega: torch.Tensor) -> Iterator[None]:
        """Hooks that mix the adapters by `omega`, on the base's modules for this block only:
        between mixed passes the base is a plain model (a copy of it carries no hook), and a
        pass in another thread (a deployment serving while it unlearns) is not mixed."""
        handles = [
            self.model.get_submodule(path).register_forward_hook(self._lora_hook(path))
            for path in self.layers
        ]
        handles += [
            self.model.get_submodule(path).register_forward_hook(self._whole_hook(path))
            for path in self.whole
        ]
        self._local.omega = omega
        try:
            yield
        finally:
            self._local.omega = None
            for handle in handles:
                handle.remove()

    def _lora_hook(self, path: str) -> Any:
        target = self.model.get_submodule(path)

        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor | None:
            omega = self._omega
            if omega is None or module is not target:
                return None
            a, b = self.layers[path]
            bsz, k = omega.shape
            h = F.linear(inputs[0], a)
            shape = h.shape
            h = h.reshape(bsz, -1, k, shape[-1] // k) * omega[:, None, :, None]
            return output + F.linear(h.reshape(shape), b)

        return hook

    def _whole_hook(self, path: str) -> Any:
        target = self.model.get_submodule(path)

        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor | None:
            omega = self._omega
            if omega is None or module is not target:
                return None
            mixed = 0
            for k, module_k in enumerate(self.whole[path]):
                y = module_k(*inputs)
                mixed = mixed + omega[:, k].reshape(-1, *[1] * (y.dim() - 1)) * y
            return mixed

        return hook

    def to(self, device: str | torch.device) -> AdapterMixture:
        """Move the base, the stacked adapters and the validation tensors to `device`."""
        self.model.to(device)
        self.layers = {p: (a.to(device), b.to(device)) for p, (a, b) in self.layers.items()}
        for copies in self.whole.values():
            for module in copies:
                module.to(device)
        if self.valid_repr is not None:
            self.valid_repr = self.valid_repr.to(device)
            self.valid_error = self.valid_error.to(device)
        return self

    def row_weights(self, reps: torch.Tensor) -> torch.Tensor:
        """ω [B, K] = softmax(−tau · each adapter's mean log-loss on the rows' nearest valid
        rows by cosine)."""
        sims = reps @ self.valid_repr.T
        nearest = sims.topk(self.neighbours, dim=1).indices  # [B, N]
        errors = self.valid_error[:, nearest].mean(dim=-1).T  # [B, K]
        return torch.softmax(-self.tau * errors, dim=-1)

    @torch.no_grad()
    def mixed_logits(
        self, batch: dict[str, torch.Tensor], omega: torch.Tensor, full: bool = False
    ) -> torch.Tensor:
        """Answer-position logits [B, V] with the adapters mixed by `omega` [B, K]. A causal
        model of a type in ANSWER_HEADS runs its LM head at the answer position only (the same
        logits; `full=True` runs the whole model as `Recommender.answer_logits` does)."""
        dtype = next(self.model.parameters()).dtype
        head = ANSWER_HEADS.get(getattr(self.model.config, "model_type", None))
        with self._mixing(omega.to(dtype)):
            if full or head is None or self.recommender.kind != "causal":
                return self.recommender.answer_logits(batch, self.model)
            hidden = self.model.base_model(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
            ).last_hidden_state
            index = (batch["answer_start"] - 1).clamp(min=0)
            rows = torch.arange(hidden.shape[0], device=hidden.device)
            return getattr(self.model, head)(hidden[rows, index])

    def answer_logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Full-vocabulary logits [B, V] at the first answer position, adapters mixed per row.
        With tau 0 every row's weights are uniform (the softmax of a constant), so the rows'
        representations are not computed: one mixed pass."""
        if self.tau == 0:
            k = self.valid_error.shape[0]
            ids = batch["input_ids"]
            omega = torch.full((ids.shape[0], k), 1.0 / k, device=ids.device)
        else:
            reps = represent(self.recommender, self.model, batch, self.represent_layers)
            omega = self.row_weights(reps)
        return self.mixed_logits(batch, omega)

    def target_logits(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """`answer_logits` as [B, 1, V] with the first answer token [B, 1], the shape
        `Recommender.target_logits` gives (the scorers read the first answer position only)."""
        labels = batch["labels"]
        if self.recommender.kind == "seq2seq":
            first = labels[:, :1]
        else:
            first = labels.gather(1, batch["answer_start"].unsqueeze(1))
        return self.answer_logits(batch).unsqueeze(1), first


def stacked_adapters(
    peft_model: nn.Module, names: list[str]
) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], dict[str, list[nn.Module]]]:
    """The adapters `names` of a PEFT model, by base-model module path: stacked LoRA factors
    (A [K·r, in], scale·B [out, K·r]) and the K copies of every module trained whole."""
    from peft.tuners.lora import LoraLayer
    from peft.utils.other import ModulesToSaveWrapper

    prefix = "base_model.model."
    layers, whole = {}, {}
    for name, module in peft_model.named_modules():
        path = name.removeprefix(prefix)
        if isinstance(module, LoraLayer) and names[0] in module.lora_A:
            a = torch.cat([module.lora_A[n].weight for n in names], dim=0)
            b = torch.cat([module.lora_B[n].weight * module.scaling[n] for n in names], dim=1)
            layers[path] = (a.detach(), b.detach())
        elif isinstance(module, ModulesToSaveWrapper) and names[0] in module.modules_to_save:
            whole[path] = [copy.deepcopy(module.modules_to_save[n]) for n in names]
    return layers, whole


def load_adapters(
    run: Path, adapters: list[dict[str, Any]], base: Recommender | None = None
) -> tuple[Recommender, Any, Any]:
    """The run's base recommender (plain model; `base`: the frozen base already in memory,
    used in place instead of loading `run/base`) and its adapters' stacked weights."""
    from peft import PeftModel

    recommender = load_recommender(run / BASE_DIR) if base is None else base
    names = [a["name"] for a in adapters]
    peft_model = PeftModel.from_pretrained(
        recommender.model, run / adapters[0]["path"], adapter_name=names[0]
    )
    for adapter in adapters[1:]:
        peft_model.load_adapter(run / adapter["path"], adapter_name=adapter["name"])
    layers, whole = stacked_adapters(peft_model, names)
    originals = {
        path: peft_model.base_model.model.get_submodule(path).original_module for path in whole
    }
    model = peft_model.unload()
    for path, module in originals.items():  # the frozen base's own module, not an adapter's
        parent, _, child = path.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, module)
    recommender.model = model
    return recommender, layers, whole


def load_mixture(
    run: Path, manifest: dict[str, Any], base: Recommender | None = None
) -> AdapterMixture:
    """Load an APA run (format "apa") for scoring (`base`: its frozen base already in memory)."""
    from safetensors.torch import load_file

    recommender, layers, whole = load_adapters(run, manifest["adapters"], base)
    valid = load_file(run / VALIDATION)
    aggregation = manifest["aggregation"]
    return AdapterMixture(
        recommender,
        layers,
        whole,
        valid["representation"],
        valid["log_loss"],
        float(aggregation["tau"]),
        int(aggregation["neighbours"]),
        aggregation.get("represent_layers"),
    )
