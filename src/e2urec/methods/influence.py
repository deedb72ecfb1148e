"""Influence: unlearning by one influence-function update, no training loop (LLMEraser-style).

Δθ = −scale · (H + λI)⁻¹ · (1/n) Σ_{i∈U} [∇ℓ(z′ᵢ) − ∇ℓ(zᵢ)] over the edited parameters, where n
is the number of training rows, U the forgotten rows, ℓ a row's mean answer cross-entropy and H
the Hessian of the training loss. `mode=remove` drops the z′ term (Δθ = +(scale/n)·(H + λI)⁻¹
Σ∇ℓ(zᵢ), the first-order effect of removing the rows); `mode=flip` sets z′ = the row with the
other answer (correcting polluted labels). With `center=true` (default) removal uses
Σ[∇ℓ(zᵢ) − ḡ], ḡ the mean gradient of the retained rows (a seeded sample of `center_rows`,
cached with the curvature): the Newton step towards the retained rows' optimum minus the one
towards all rows' optimum, so an Original that is not at a stationary point (early stopping)
is not also pushed on towards one; at a stationary point it is the Newton step on the retained
loss. (A flip's difference of two gradients needs no centering.) Solvers (see `curvature`): `cg`, conjugate gradient
with exact Hessian-vector products on a seeded sample of retained rows; `ekfac`, a cached EK-FAC
curvature of the model version (built once on a seeded sample of retained rows, stored in
`<version>/curvature/` as safetensors keyed by the sha256 of the weights, reused in this process
for the versions its own edits produce while the rows removed since it was built stay within
`refresh` of n; then rebuilt). The result is a whole model (format "single").
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import random
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from e2urec.backbones import (
    ANSWERS,
    BACKBONES,
    IGNORE,
    Recommender,
    block_lists,
    is_lora,
    save_recommender,
)
from e2urec.backbones import weights_digest as weights_key
from e2urec.config import check_settings, setting
from e2urec.errors import E2URecError
from e2urec.eval.scoring import to_device
from e2urec.methods.base import Method, UnlearnContext, register
from e2urec.methods.curvature import (
    EKFAC,
    build_ekfac,
    conjugate_gradient,
    gradient_sum,
    hessian_operator,
)

log = logging.getLogger(__name__)
CURVATURE_DIR = "curvature"
_MEMORY: OrderedDict[tuple[str, str], tuple[EKFAC, int]] = OrderedDict()  # warm cache
MEMORY_SLOTS = 4
SEARCH_TIE = 0.001  # validation log-loss within this of the best counts as a tie


@dataclass
class InfluenceParams:
    """Influence settings. `params`: auto (LoRA-targeted weights when the Original was trained
    with `--finetune lora`, all weights otherwise), lora, all, head (the output layer) or last:K
    (the last K transformer blocks). `solver`: ekfac (cached curvature) or cg (exact HVPs on
    `hvp_rows` retained rows, at most `cg_iters` iterations to relative residual `cg_tol`).
    `curvature`: auto (reuse a stored or in-memory one when the refresh rule allows, else build
    and store), build (always build) or the path of a curvature file of this version.
    `curvature_rows`: retained rows the EK-FAC is built on; `refresh`: share of n that may be
    removed since the curvature was built before it is rebuilt. `center`: subtract the retained
    rows' mean gradient (over `center_rows` of them) from each removed row's (mode=remove).
    `search`: none, or valid (scale the step by the multiplier 2^k, k = 2, 1, 0, −1, … over
    `search_steps` candidates, with the lowest validation log-loss on `search_rows` seeded valid
    rows; ties within 0.001 go to the larger step)."""

    mode: Literal["remove", "flip"] = setting(
        "remove", "remove the forget rows, or flip their answers (z' = the other answer)"
    )
    params: str = setting(
        "auto",
        "weights updated: auto (LoRA targets after --finetune lora, else all), lora, "
        "all, head or last:K",
    )
    solver: Literal["ekfac", "cg"] = setting(
        "ekfac", "ekfac: cached EK-FAC curvature; cg: exact Hessian-vector products"
    )
    damping: float = setting(0.3, "λ added to the curvature", rule="positive")
    scale: float = setting(1.0, "multiplier of the update Δθ", rule="positive")
    cg_iters: int = setting(100, "cg: most iterations", rule="count")
    cg_tol: float = setting(1e-3, "cg: relative residual to stop at", rule="positive")
    hvp_rows: int = setting(256, "cg: retained rows of the Hessian-vector products", rule="count")
    curvature_rows: int = setting(256, "retained rows the EK-FAC is built on", rule="count")
    batch_size: int = setting(32, "rows per gradient batch", rule="count")
    curvature: str = setting(
        "auto",
        "auto (reuse a stored or in-memory curvature the refresh rule allows, else "
        "build and store), build, or the path of a curvature file of this version",
    )
    refresh: float = setting(
        0.1, "share of n removed since the curvature was built before it is rebuilt", rule="unit"
    )
    center: bool = setting(
        True, "subtract the retained rows' mean gradient from each removed row's (remove)"
    )
    center_rows: int = setting(1024, "retained rows of that mean gradient", rule="count")
    search: Literal["none", "valid"] = setting(
        "none", "valid: choose the step's length 2^k on validation rows (the lowest log-loss)"
    )
    search_rows: int = setting(256, "search: seeded validation rows scored", rule="count")
    search_steps: int = setting(
        9, "search: candidate multipliers 4, 2, 1, 1/2, ... (9: down to 1/64)", rule="count"
    )

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """One clear error for the first value out of range (before anything is written)."""
        check_settings(self, "influence parameter ")  # choices and ranges of the declarations
        spec = str(self.params)
        if spec not in ("auto", "lora", "all", "head") and not spec.startswith("last:"):
            raise E2URecError(
                f"influence parameter params must be auto, lora, all, head or last:K, got {spec!r}"
            )
        if spec.startswith("last:"):
            count = spec.removeprefix("last:")
            if not count.isdigit() or int(count) < 1:
                raise E2URecError(f"influence params=last:K needs a whole K ≥ 1, got {spec!r}")

    def check_data(self, data_dir: Path) -> None:
        """mode=flip needs a forget set whose answers are Yes./No. (the other answer exists)."""
        if self.mode == "flip":
            from e2urec.data.dataset import load_split

            check_flippable(load_split(data_dir, "forget").to_dict("records"))
        if self.search == "valid":
            from e2urec.data.dataset import load_split

            if load_split(data_dir, "valid").empty:
                raise E2URecError(
                    f"influence search=valid needs validation rows; the valid split of "
                    f"{data_dir} is empty"
                )

    def check_base(self, base_run: Path, base: dict[str, Any]) -> None:
        """Settings that depend on the Original: params=lora needs a LoRA-tuned one, last:K at
        most its layers, a curvature file must be this version's."""
        if self.params == "lora" and base.get("finetune") != "lora":
            raise E2URecError(
                f"influence params=lora: {base_run} was fully fine-tuned (finetune "
                f"{base.get('finetune', 'full')!r}), it has no LoRA adapters; use params=all, "
                "head or last:K"
            )
        if self.params.startswith("last:"):
            from e2urec.runs import MODEL_DIR

            layers = config_layers(base_run / MODEL_DIR / "config.json")
            wanted = int(self.params.removeprefix("last:"))
            if layers is not None and wanted > layers:
                raise E2URecError(
                    f"influence params={self.params}: the model of {base_run} has {layers} "
                    "layers in its last block list"
                )
        if self.curvature not in ("auto", "build"):
            edits_adapter = resolve_params(self.params, base) == "lora"
            check_curvature_file(Path(self.curvature), base_run, edits_adapter)


# ---------------------------------------------------------------- checks
def check_flippable(rows: Sequence[dict[str, Any]]) -> None:
    """Every row's answer must be Yes. or No. for mode=flip."""
    odd = sorted({str(r.get("target")) for r in rows} - set(ANSWERS))
    if odd:
        raise E2URecError(
            f"influence mode=flip needs Yes./No. answers; the forget set has {odd[:3]}"
        )


def config_layers(path: Path) -> int | None:
    """Layers of the last block list a model config records (T5: decoder layers)."""
    if not path.is_file():
        return None
    config = json.loads(path.read_text(encoding="utf-8"))
    for key in ("num_decoder_layers", "num_layers", "num_hidden_layers", "n_layer"):
        if isinstance(config.get(key), int):
            return config[key]
    return None


def check_curvature_file(path: Path, base_run: Path, edits_adapter: bool) -> None:
    """A curvature file given by path must exist and have been built on `base_run`'s weights
    (loaded as `run` loads them: a LoRA Original's adapter kept apart when it is edited)."""
    from e2urec.backbones import load_recommender
    from e2urec.runs import MODEL_DIR

    if not path.is_file():
        raise E2URecError(f"influence curvature file not found: {path}")
    stored = EKFAC.load(path)
    key = weights_key(load_recommender(base_run / MODEL_DIR, editable=edits_adapter).model)
    if stored.info.get("weights_key") != key:
        raise E2URecError(
            f"influence curvature {path} was built for another model version (weights sha256 "
            f"{str(stored.info.get('weights_key'))[:12]}, {base_run} has {key[:12]})"
        )


# ---------------------------------------------------------------- which parameters
def resolve_params(spec: str, base: dict[str, Any]) -> str:
    """`params=auto` resolved: lora for a LoRA Original, all otherwise; other specs as given."""
    if spec != "auto":
        return spec
    return "lora" if base.get("finetune", "full") == "lora" else "all"


def select_params(model: nn.Module, spec: str, base: dict[str, Any]) -> tuple[str, list[str]]:
    """(resolved spec, names of the edited parameters) for `params=spec`; `lora` on an Original
    stored as its adapter (a PEFT model) edits the adapter's A and B matrices (LLMEraser's
    regime), on one stored merged the LoRA-targeted weights."""
    finetune = base.get("finetune", "full")
    resolved = resolve_params(spec, base)
    named = dict(model.named_parameters())
    if resolved == "all":
        return resolved, list(named)
    if resolved == "lora":
        if finetune != "lora":
            raise E2URecError("influence params=lora needs an Original trained with LoRA")
        if is_lora(model):
            return resolved, [n for n in named if ".lora_" in n]
        family = BACKBONES.get(base["family"]) if base.get("family") in BACKBONES else None
        targets = set(family.lora_targets or ()) if family else set()
        targets = targets or {"q", "v", "q_proj", "v_proj", "query", "value"}
        names = [n for n in named if n.endswith(".weight") and n.split(".")[-2] in targets]
        return resolved, names
    if resolved == "head":
        head = model.get_output_embeddings()
        ids = {id(p) for p in head.parameters()}
        return resolved, [n for n, p in named.items() if id(p) in ids]
    wanted = int(resolved.removeprefix("last:"))
    blocks = block_lists(model)
    if not blocks:
        raise E2URecError("influence params=last:K: the model has no list of transformer blocks")
    prefix, modules = blocks[-1]
    if wanted > len(modules):
        raise E2URecError(
            f"influence params={resolved}: the model has {len(modules)} layers in {prefix}"
        )
    first = len(modules) - wanted
    keep = tuple(f"{prefix}.{i}." for i in range(first, len(modules)))
    return resolved, [n for n in named if n.startswith(keep)]


# ---------------------------------------------------------------- losses
def row_losses(
    recommender: Recommender,
    model: nn.Module,
    rows: Sequence[dict[str, Any]],
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Each row's mean answer cross-entropy [B]; with `generator`, against answers sampled from
    the model itself (for the Fisher)."""
    batch = to_device(recommender.collate(rows), next(model.parameters()).device)
    logits, labels = recommender.target_logits(batch, model)
    logits = logits.float()
    if generator is not None:
        probs = torch.softmax(logits.detach(), dim=-1).reshape(-1, logits.shape[-1])
        drawn = torch.multinomial(probs, 1, generator=generator).reshape(labels.shape)
        labels = torch.where(labels != IGNORE, drawn, labels)
    ce = nn.functional.cross_entropy(
        logits.transpose(1, 2), labels, ignore_index=IGNORE, reduction="none"
    )
    mask = (labels != IGNORE).float()
    return (ce * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)


def flipped(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows with the other answer (z′ of mode=flip)."""
    swap = {ANSWERS[0]: ANSWERS[1], ANSWERS[1]: ANSWERS[0]}
    return [{**r, "target": swap[r["target"]], "label": 1 - int(r["label"])} for r in rows]


def forget_gradient(
    recommender: Recommender,
    model: nn.Module,
    params: dict[str, nn.Parameter],
    rows: Sequence[dict[str, Any]],
    mode: str,
    batch_size: int,
) -> dict[str, torch.Tensor]:
    """b = Σ_U [∇ℓ(z) − ∇ℓ(z′)] (z′ term only for mode=flip)."""
    if mode == "flip":
        check_flippable(rows)

        def loss(part: Sequence[dict[str, Any]]) -> torch.Tensor:
            return row_losses(recommender, model, part) - row_losses(
                recommender, model, flipped(part)
            )
    else:

        def loss(part: Sequence[dict[str, Any]]) -> torch.Tensor:
            return row_losses(recommender, model, part)

    return gradient_sum(params, loss, rows, batch_size)


# ---------------------------------------------------------------- the curvature cache
def curvature_settings(p: InfluenceParams, resolved: str, seed: int) -> str:
    """What a stored curvature must share with the request (its file name carries a hash)."""
    return json.dumps(
        {"params": resolved, "rows": p.curvature_rows, "seed": seed, "center_rows": p.center_rows}
    )


def curvature_path(base_run: Path, key: str, settings: str) -> Path:
    tag = hashlib.sha256(settings.encode()).hexdigest()[:8]
    return base_run / CURVATURE_DIR / f"ekfac-{key[:16]}-{tag}.safetensors"


def remember(key: str, settings: str, curvature: EKFAC, rows_since: int) -> None:
    """Keep `curvature` in this process for the model with weights `key`."""
    _MEMORY[(key, settings)] = (curvature, rows_since)
    _MEMORY.move_to_end((key, settings))
    while len(_MEMORY) > MEMORY_SLOTS:
        _MEMORY.popitem(last=False)


def get_curvature(
    ctx: UnlearnContext,
    recommender: Recommender,
    params: dict[str, nn.Parameter],
    key: str,
    resolved: str,
) -> tuple[EKFAC, dict[str, Any]]:
    """The EK-FAC for this model version: from memory, the version's folder, the given file,
    or built now (and stored); returns it and how it was obtained."""
    p: InfluenceParams = ctx.params
    settings = curvature_settings(p, resolved, ctx.seed)
    began = time.perf_counter()
    if p.curvature not in ("auto", "build"):
        curvature = EKFAC.load(Path(p.curvature))
        return curvature, {
            "source": "file",
            "file": p.curvature,
            "rows_since": 0,
            "load_s": round(time.perf_counter() - began, 3),
        }
    path = curvature_path(ctx.base_run, key, settings)
    if p.curvature == "auto" and (key, settings) in _MEMORY:
        curvature, since = _MEMORY[(key, settings)]
        return curvature, {"source": "memory", "rows_since": since, "load_s": 0.0}
    if p.curvature == "auto" and path.is_file():
        curvature = EKFAC.load(path)
        if curvature.info.get("weights_key") == key:
            return curvature, {
                "source": "file",
                "file": str(path),
                "rows_since": 0,
                "load_s": round(time.perf_counter() - began, 3),
            }
    retain = list(ctx.rows("retain"))
    sample = random.Random(ctx.seed).sample(retain, min(p.curvature_rows, len(retain)))
    generator = torch.Generator().manual_seed(ctx.seed)
    curvature = build_ekfac(
        recommender.model,
        params,
        lambda rows: row_losses(recommender, recommender.model, rows, generator),
        sample,
    )
    curvature.info.update(weights_key=key, settings=settings)
    stored = None
    if p.center and p.mode == "remove":
        curvature.mean_grad = mean_gradient(ctx, recommender, params)
        curvature.info["build_s"] = round(time.perf_counter() - began, 3)
    try:
        curvature.info["file"] = str(path)
        curvature.save(path)
        stored = str(path)
    except OSError as exc:  # a read-only version folder: keep it in memory only
        curvature.info["file"] = None
        log.warning("influence: could not store the curvature in %s (%s)", path.parent, exc)
    return curvature, {
        "source": "built",
        "file": stored,
        "rows_since": 0,
        "build_s": curvature.info["build_s"],
    }


def mean_gradient(
    ctx: UnlearnContext, recommender: Recommender, params: dict[str, nn.Parameter]
) -> dict[str, torch.Tensor]:
    """ḡ: the mean gradient of `center_rows` seeded retained rows (true answers)."""
    p: InfluenceParams = ctx.params
    retain = list(ctx.rows("retain"))
    sample = random.Random(ctx.seed + 1).sample(retain, min(p.center_rows, len(retain)))
    model = recommender.model
    total = gradient_sum(
        params, lambda rows: row_losses(recommender, model, rows), sample, p.batch_size
    )
    return {k: v / len(sample) for k, v in total.items()}


def centering(
    ctx: UnlearnContext,
    recommender: Recommender,
    params: dict[str, nn.Parameter],
    curvature: EKFAC | None,
) -> tuple[dict[str, torch.Tensor], str]:
    """ḡ from the cached curvature (computed and stored with it when missing) or, for the CG
    solver, computed now; and where it came from."""
    if curvature is None:
        return mean_gradient(ctx, recommender, params), "computed"
    if set(params) <= set(curvature.mean_grad):
        return curvature.mean_grad, "cached"
    curvature.mean_grad = mean_gradient(ctx, recommender, params)
    stored = curvature.info.get("file")
    if stored:
        with contextlib.suppress(OSError):
            curvature.save(Path(stored))
    return curvature.mean_grad, "computed"


# ---------------------------------------------------------------- the step's length
def search_step(
    ctx: UnlearnContext,
    recommender: Recommender,
    params: dict[str, nn.Parameter],
    delta: dict[str, torch.Tensor],
) -> tuple[float, dict[str, Any]]:
    """search=valid: the multiplier m of Δθ (2^k, k = 2, 1, 0, −1, …, `search_steps` of them)
    whose model θ + m·Δθ has the lowest mean log-loss of P(Yes) on `search_rows` seeded
    validation rows (ties within SEARCH_TIE to the larger m); the parameters are left at θ."""
    from e2urec.eval.metrics import logloss
    from e2urec.eval.predict import score_rows
    from e2urec.runs import SingleModel

    p: InfluenceParams = ctx.params
    began = time.perf_counter()
    valid = list(ctx.rows("valid"))
    if not valid:
        raise E2URecError("influence search=valid needs validation rows; the valid split is empty")
    sample = random.Random(ctx.seed + 2).sample(valid, min(p.search_rows, len(valid)))
    labels = [int(r["label"]) for r in sample]
    start = {k: t.detach().clone() for k, t in params.items()}
    scorer = SingleModel(recommender)

    def loss_at(multiplier: float) -> float:
        with torch.no_grad():
            for k, t in params.items():
                t.copy_(start[k] + multiplier * delta[k].to(t.dtype))
        scores = score_rows(scorer, sample, batch_size=p.batch_size, progress=False)
        return logloss(labels, scores.p_yes)

    losses = {2.0 ** (2 - i): loss_at(2.0 ** (2 - i)) for i in range(p.search_steps)}
    original = loss_at(0.0)  # leaves the parameters at θ
    best = min(losses.values())
    chosen = max(m for m, value in losses.items() if value <= best + SEARCH_TIE)
    edge = chosen in (min(losses), max(losses)) and len(losses) > 1
    if edge:
        log.warning(
            "influence: the validation search chose the %s step it tried (x%g); a wider search "
            "(search_steps) or another damping may do better",
            "shortest" if chosen == min(losses) else "longest",
            chosen,
        )
    return chosen, {
        "at_edge": edge,
        "rows": len(sample),
        "multiplier": chosen,
        "valid_logloss": {f"{m:g}": round(v, 5) for m, v in losses.items()},
        "original_valid_logloss": round(original, 5),
        "s": round(time.perf_counter() - began, 3),
    }


# ---------------------------------------------------------------- the method
def solve(
    ctx: UnlearnContext,
    recommender: Recommender,
    params: dict[str, nn.Parameter],
    b: dict[str, torch.Tensor],
    key: str,
    resolved: str,
) -> tuple[dict[str, torch.Tensor], dict[str, Any], EKFAC | None]:
    """x ≈ (H + λI)⁻¹ b by the chosen solver (b centred first for a centred removal); its
    report; the curvature used (ekfac)."""
    p: InfluenceParams = ctx.params
    centred = p.center and p.mode == "remove"
    forgotten = len(ctx.rows("forget"))
    if p.solver == "cg":
        centre_s = 0.0
        if centred:
            began = time.perf_counter()
            gbar, _ = centering(ctx, recommender, params, None)
            b = {k: v - forgotten * gbar[k] for k, v in b.items()}
            centre_s = round(time.perf_counter() - began, 3)
        retain = list(ctx.rows("retain"))
        sample = random.Random(ctx.seed).sample(retain, min(p.hvp_rows, len(retain)))
        model = recommender.model
        apply_h = hessian_operator(
            params, lambda rows: row_losses(recommender, model, rows), sample, p.batch_size
        )
        x, info = conjugate_gradient(apply_h, b, p.damping, p.cg_iters, p.cg_tol)
        info["centre"] = {"source": "computed", "s": centre_s} if centred else None
        return x, {"solver": "cg", "hvp_rows": len(sample), "tol": p.cg_tol, **info}, None
    curvature, obtained = get_curvature(ctx, recommender, params, key, resolved)
    missing = set(params) - curvature.names()
    if missing:
        raise E2URecError(
            f"influence curvature covers other parameters than params={resolved} "
            f"(e.g. {sorted(missing)[0]}); build one with curvature=build"
        )
    began = time.perf_counter()
    if centred:
        gbar, obtained["centre"] = centering(ctx, recommender, params, curvature)
        b = {k: v - forgotten * gbar[k] for k, v in b.items()}
    x = curvature.solve({k: b[k] for k in params}, p.damping)
    obtained["solve_s"] = round(time.perf_counter() - began, 3)
    report = {"solver": "ekfac", "converged": True, "residual": None, "iterations": 0}
    return x, {**report, "curvature": {**obtained, **curvature.info}}, curvature


def run(ctx: UnlearnContext) -> dict[str, Any]:
    """One influence update of the original (see the module docstring)."""
    from e2urec.runs import MODEL_DIR

    p: InfluenceParams = ctx.params
    timings: dict[str, float] = {}
    clock = time.perf_counter()
    recommender = ctx.original(editable=resolve_params(str(p.params), ctx.base_manifest) == "lora")
    model = recommender.model.eval()
    resolved, names = select_params(model, str(p.params), ctx.base_manifest)
    named = dict(model.named_parameters())
    for param in model.parameters():
        param.requires_grad_(False)
    params = {n: named[n].requires_grad_(True) for n in names}
    key = weights_key(model)
    forget, retain = list(ctx.rows("forget")), ctx.rows("retain")
    n = len(forget) + len(retain)
    timings["setup_s"] = time.perf_counter() - clock
    with ctx.meter.phase("gradient"):
        clock = time.perf_counter()
        b = forget_gradient(recommender, model, params, forget, p.mode, p.batch_size)
        timings["gradient_s"] = time.perf_counter() - clock
    with ctx.meter.phase("solve"):
        clock = time.perf_counter()
        x, report, curvature = solve(ctx, recommender, params, b, key, resolved)
        timings["solve_s"] = time.perf_counter() - clock
    with ctx.meter.phase("apply"):
        clock = time.perf_counter()
        step = p.scale / n
        delta = {k: step * v for k, v in x.items()}
        bad = [k for k, v in delta.items() if not torch.isfinite(v).all()]
        if bad:
            raise E2URecError(
                f"influence update is not finite ({bad[0]}); nothing written (raise damping)"
            )
        if p.search == "valid":
            multiplier, report["search"] = search_step(ctx, recommender, params, delta)
            delta = {k: multiplier * v for k, v in delta.items()}
        with torch.no_grad():
            for k, v in delta.items():
                params[k].add_(v.to(params[k].dtype))
        timings["apply_s"] = time.perf_counter() - clock
    ctx.meter.count(1, len(forget))  # one parameter update
    if curvature is not None:
        since = report["curvature"]["rows_since"] + len(forget)
        settings = curvature.info["settings"]
        remember(key, settings, curvature, report["curvature"]["rows_since"])
        if since <= p.refresh * n:
            remember(weights_key(model), settings, curvature, since)
    if not report["converged"]:
        log.warning(
            "influence: the %s solver stopped at relative residual %.3g after %d iterations "
            "(tolerance %g%s); the update is approximate",
            report["solver"],
            report["residual"],
            report["iterations"],
            p.cg_tol,
            ", negative curvature" if report.get("negative_curvature") else "",
        )
    obtained = report.get("curvature") or {}
    build = obtained.get("build_s", 0.0) if obtained.get("source") == "built" else 0.0
    fields = influence_fields(p, resolved, params, delta, report, timings, n, len(forget), build)
    with ctx.meter.phase("save"):
        save_recommender(recommender, ctx.run_dir / MODEL_DIR)
    return {"format": "single", "influence": fields, "cost": ctx.meter.summary(model)}


def influence_fields(
    p: InfluenceParams,
    resolved: str,
    params: dict[str, nn.Parameter],
    delta: dict[str, torch.Tensor],
    report: dict[str, Any],
    timings: dict[str, float],
    n: int,
    forgotten: int,
    build_s: float,
) -> dict[str, Any]:
    """The manifest's `influence` record."""
    norm = math.sqrt(sum(float((d.double() ** 2).sum()) for d in delta.values()))
    theta = math.sqrt(sum(float((t.detach().double() ** 2).sum()) for t in params.values()))
    request = sum(timings.values()) - build_s
    return {
        "mode": p.mode,
        "params": {
            "spec": p.params,
            "resolved": resolved,
            "tensors": len(params),
            "count": sum(t.numel() for t in params.values()),
        },
        "n": n,
        "forget_rows": forgotten,
        "damping": p.damping,
        "scale": p.scale,
        "solver": {k: v for k, v in report.items() if k != "search"},
        "search": report.get("search"),
        "delta_norm": norm,
        "relative_delta": norm / theta if theta else None,
        "timings_s": {k: round(v, 3) for k, v in timings.items()},
        "curvature_build_s": build_s,
        "request_s": round(request, 3),
    }


def check_original(base_run: Path, base: dict[str, Any], data_dir: Path, params: Any) -> None:
    """The Method.check hook: settings the Original cannot serve (`InfluenceParams.check_base`)."""
    params.check_base(base_run, base)


register(
    Method(
        name="influence",
        params=InfluenceParams,
        run=run,
        description="one influence-function update (H + λI)⁻¹ of the forget gradient "
        "(LLMEraser-style; EK-FAC cached curvature or exact CG), no training loop",
        source="this project",
        check=check_original,
    )
)
