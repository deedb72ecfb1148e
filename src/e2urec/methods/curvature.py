"""Curvature for influence updates: solve (H + λI) x = b over a set of named parameters.

Two solvers:
- `conjugate_gradient` with exact Hessian-vector products (`hessian_operator`: double backprop
  through the mean loss of a sample of rows). The reference: exact up to its tolerance, but every
  iteration costs a forward and two backward passes over the sample.
- `EKFAC`, built once per model version (`build_ekfac`) and solved in closed form: per linear
  layer the eigen-bases of the input-activation covariance A and output-gradient covariance G
  (K-FAC), with the eigenvalues re-fitted to the per-row gradients in that basis (George et
  al. 2018, as used by Grosse et al. 2023); every other parameter (embeddings, norms, tied
  weights) gets the diagonal of the same Fisher. Gradients come from answers sampled from the
  model (the true Fisher, a positive semi-definite stand-in for the Hessian at a minimum).
  Stored as safetensors keyed by `weights_key` of the model it was built on.

Parameters are handled as {name: tensor} dicts in a fixed order; `flat`/`cosine` compare them.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from e2urec.errors import E2URecError

Vec = dict[str, torch.Tensor]
# rows → per-row losses [B] (each row's mean answer cross-entropy), differentiable
RowLoss = Callable[[Sequence[Any]], torch.Tensor]
FORMAT = "e2urec-ekfac-1"


# ---------------------------------------------------------------- vectors
def dot(a: Vec, b: Vec) -> float:
    """Σ over names of ⟨a, b⟩ (float64)."""
    return float(sum((a[k].double() * b[k].double()).sum() for k in a))


def axpy(alpha: float, x: Vec, y: Vec) -> Vec:
    """alpha·x + y."""
    return {k: alpha * x[k] + y[k] for k in y}


def flat(v: Vec) -> torch.Tensor:
    """One float64 vector of all entries (names in sorted order)."""
    return torch.cat([v[k].double().reshape(-1) for k in sorted(v)])


def cosine(a: Vec, b: Vec) -> float:
    """Cosine similarity of two parameter vectors."""
    fa, fb = flat(a), flat(b)
    return float(fa @ fb / (fa.norm() * fb.norm()).clamp(min=1e-300))


# ---------------------------------------------------------------- gradients and HVPs
def chunks(rows: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    """Consecutive slices of `rows` of at most `size` items."""
    for start in range(0, len(rows), size):
        yield rows[start : start + size]


def gradient_sum(
    params: dict[str, nn.Parameter], loss: RowLoss, rows: Sequence[Any], batch_size: int
) -> Vec:
    """Σ over `rows` of the gradient of their per-row losses (one forward and backward each)."""
    total = {k: torch.zeros_like(p) for k, p in params.items()}
    names, tensors = list(params), list(params.values())
    for part in chunks(rows, batch_size):
        grads = torch.autograd.grad(loss(part).sum(), tensors, allow_unused=True)
        for name, grad in zip(names, grads, strict=True):
            if grad is not None:
                total[name] += grad.detach()
    return total


def hessian_operator(
    params: dict[str, nn.Parameter], loss: RowLoss, rows: Sequence[Any], batch_size: int
) -> Callable[[Vec], Vec]:
    """v ↦ H v, H = the exact Hessian of the mean loss over `rows` (double backprop)."""
    names, tensors = list(params), list(params.values())

    def apply(v: Vec) -> Vec:
        out = {k: torch.zeros_like(p) for k, p in params.items()}
        for part in chunks(rows, batch_size):
            with sdpa_kernel(SDPBackend.MATH):  # the fused kernels have no double backward
                hv = _hvp_part(loss, part, names, tensors, v)
            for name, h in zip(names, hv, strict=True):
                if h is not None:
                    out[name] += h.detach()
        return {k: t / len(rows) for k, t in out.items()}

    return apply


def _hvp_part(
    loss: RowLoss, part: Sequence[Any], names: list[str], tensors: list[torch.Tensor], v: Vec
) -> Sequence[torch.Tensor | None]:
    grads = torch.autograd.grad(loss(part).sum(), tensors, create_graph=True, allow_unused=True)
    inner = sum((g * v[k]).sum() for k, g in zip(names, grads, strict=True) if g is not None)
    if not isinstance(inner, torch.Tensor) or not inner.requires_grad:
        return [None] * len(tensors)
    return torch.autograd.grad(inner, tensors, allow_unused=True)


def conjugate_gradient(
    apply_h: Callable[[Vec], Vec], b: Vec, damping: float, max_iter: int, tol: float
) -> tuple[Vec, dict[str, Any]]:
    """Solve (H + damping·I) x = b from x = 0. Stops at relative residual ‖r‖/‖b‖ ≤ tol, after
    `max_iter` iterations, or at a direction of non-positive curvature (H + λI not positive
    definite there); returns x and {iterations, residual, converged, negative_curvature, s}."""
    began = time.perf_counter()
    x = {k: torch.zeros_like(t) for k, t in b.items()}
    r = {k: t.clone() for k, t in b.items()}
    p = {k: t.clone() for k, t in b.items()}
    b_norm = math.sqrt(dot(b, b)) or 1.0
    rs = dot(r, r)
    info: dict[str, Any] = {"negative_curvature": False}
    iterations = 0
    while math.sqrt(rs) / b_norm > tol and iterations < max_iter:
        hp = axpy(damping, p, apply_h(p))
        curvature = dot(p, hp)
        if curvature <= 0.0:
            info["negative_curvature"] = True
            break
        alpha = rs / curvature
        x = axpy(alpha, p, x)
        r = axpy(-alpha, hp, r)
        iterations += 1
        rs_new = dot(r, r)
        p = axpy(rs_new / rs, p, r)
        rs = rs_new
    residual = math.sqrt(rs) / b_norm
    info.update(
        iterations=iterations,
        residual=residual,
        converged=residual <= tol,
        s=round(time.perf_counter() - began, 3),
    )
    return x, info


# ---------------------------------------------------------------- EK-FAC
@dataclass
class EKFAC:
    """A per-layer eigen-basis curvature; `solve(b, damping)` gives (F + λI)⁻¹ b.

    linear: weight name → (Q_A, Q_G, Λ, bias name or ""), Λ the corrected eigenvalues
    [out, in(+1)]; diag: name → Fisher diagonal. `info`: key, rows, build seconds, ...
    """

    linear: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor, str]]
    diag: Vec
    info: dict[str, Any] = field(default_factory=dict)
    mean_grad: Vec = field(default_factory=dict)  # the version's mean retained-row gradient

    @property
    def key(self) -> str:
        return self.info["weights_key"]

    def names(self) -> set[str]:
        """Every parameter name the curvature covers."""
        biases = {bias for *_, bias in self.linear.values() if bias}
        return set(self.linear) | biases | set(self.diag)

    def solve(self, b: Vec, damping: float) -> Vec:
        """(F + damping·I)⁻¹ b, name by name."""
        out = {}
        for name, (qa, qg, lam, bias) in self.linear.items():
            grad = b[name].double()
            if bias:
                grad = torch.cat([grad, b[bias].double().unsqueeze(1)], dim=1)
            rotated = qg.T @ grad @ qa
            solved = qg @ (rotated / (lam + damping)) @ qa.T
            if bias:
                out[bias] = solved[:, -1].to(b[bias].dtype)
                solved = solved[:, :-1]
            out[name] = solved.to(b[name].dtype)
        for name, d in self.diag.items():
            out[name] = (b[name].double() / (d + damping)).to(b[name].dtype)
        return out

    def save(self, path: Path) -> None:
        """Write as safetensors (float64 tensors; `info` in the metadata), atomically."""
        from safetensors.torch import save_file

        tensors = {}
        for name, (qa, qg, lam, _) in self.linear.items():
            tensors.update({f"{name}/QA": qa, f"{name}/QG": qg, f"{name}/lam": lam})
        tensors.update({f"{name}/diag": d for name, d in self.diag.items()})
        tensors.update({f"{name}/gbar": g for name, g in self.mean_grad.items()})
        biases = {name: bias for name, (*_, bias) in self.linear.items()}
        meta = {"format": FORMAT, "info": json.dumps(self.info), "biases": json.dumps(biases)}
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.partial")
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(partial), metadata=meta)
        partial.replace(path)

    @classmethod
    def load(cls, path: Path) -> EKFAC:
        """Read what `save` wrote; anything else is one clear error."""
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as handle:
                meta = handle.metadata() or {}
                if meta.get("format") != FORMAT:
                    raise E2URecError(f"{path} is not an e2urec curvature file")
                tensors = {k: handle.get_tensor(k) for k in handle.keys()}  # noqa: SIM118
        except (OSError, ValueError, RuntimeError) as exc:
            raise E2URecError(f"cannot read the curvature file {path}: {exc}") from None
        biases = json.loads(meta["biases"])
        linear = {
            name: (tensors[f"{name}/QA"], tensors[f"{name}/QG"], tensors[f"{name}/lam"], bias)
            for name, bias in biases.items()
        }
        diag = {k[: -len("/diag")]: v for k, v in tensors.items() if k.endswith("/diag")}
        gbar = {k[: -len("/gbar")]: v for k, v in tensors.items() if k.endswith("/gbar")}
        return cls(linear, diag, json.loads(meta["info"]), gbar)


def linear_layers(model: nn.Module, params: dict[str, nn.Parameter]) -> dict[str, tuple]:
    """Weight name → (module, bias name or "") for every nn.Linear whose weight is edited and
    used by that module alone (a tied weight, e.g. T5's output layer, goes to the diagonal)."""
    owners: dict[int, int] = {}
    for module in model.modules():
        for p in module.parameters(recurse=False):
            owners[id(p)] = owners.get(id(p), 0) + 1
    by_id = {id(p): name for name, p in params.items()}
    found = {}
    for module in model.modules():
        if not isinstance(module, nn.Linear) or id(module.weight) not in by_id:
            continue
        if owners[id(module.weight)] != 1:
            continue
        bias = by_id.get(id(module.bias), "") if module.bias is not None else ""
        found[by_id[id(module.weight)]] = (module, bias)
    return found


class _Recorder:
    """Forward/backward hooks keeping each layer's inputs and output gradients of one pass."""

    def __init__(self, layers: dict[str, tuple]) -> None:
        self.layers = layers
        self.inputs: dict[str, list[torch.Tensor]] = {}
        self.grads: dict[str, list[torch.Tensor]] = {}
        self.handles = []
        for name, (module, _) in layers.items():
            self.handles.append(module.register_forward_hook(self._forward(name)))

    def _forward(self, name: str) -> Callable:
        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            a = inputs[0].detach().reshape(-1, inputs[0].shape[-1]).double()
            if self.layers[name][1]:
                a = torch.cat([a, torch.ones(a.shape[0], 1, dtype=a.dtype)], dim=1)
            self.inputs.setdefault(name, []).append(a)
            output.register_hook(
                lambda g: self.grads.setdefault(name, []).append(
                    g.detach().reshape(-1, g.shape[-1]).double()
                )
            )

        return hook

    def pairs(self, name: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(inputs, output grads) of each call of the layer (grads arrive in reverse order)."""
        return list(zip(self.inputs.get(name, []), reversed(self.grads.get(name, [])), strict=True))

    def clear(self) -> None:
        self.inputs, self.grads = {}, {}

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()


def build_ekfac(
    model: nn.Module,
    params: dict[str, nn.Parameter],
    sampled_loss: RowLoss,
    rows: Sequence[Any],
) -> EKFAC:
    """EK-FAC of the per-row Fisher of `sampled_loss` (answers drawn from the model) over
    `rows`, one row per pass (per-row gradients are exact). Two passes: the K-FAC factors and
    the diagonal, then the eigenvalues re-fitted in the factors' eigen-bases."""
    began = time.perf_counter()
    layers = linear_layers(model, params)
    covered = set(layers) | {bias for _, bias in layers.values() if bias}
    others = {k: p for k, p in params.items() if k not in covered}
    tensors = list(params.values())
    names = list(params)
    recorder = _Recorder(layers)
    factor_a = {k: 0.0 for k in layers}
    factor_g = {k: 0.0 for k in layers}
    diag = {k: torch.zeros_like(p, dtype=torch.float64) for k, p in others.items()}
    try:
        for row in rows:  # pass 1: A, G and the diagonal
            recorder.clear()
            grads = torch.autograd.grad(sampled_loss([row]).sum(), tensors, allow_unused=True)
            for name, grad in zip(names, grads, strict=True):
                if name in diag and grad is not None:
                    diag[name] += grad.double() ** 2
            for name in layers:
                for a, g in recorder.pairs(name):
                    factor_a[name] = factor_a[name] + a.T @ a
                    factor_g[name] = factor_g[name] + g.T @ g
        bases = {k: (_eigvecs(factor_a[k]), _eigvecs(factor_g[k])) for k in layers}
        lam = {k: 0.0 for k in layers}
        for row in rows:  # pass 2: per-row gradients in the eigen-bases, squared
            recorder.clear()
            torch.autograd.grad(sampled_loss([row]).sum(), tensors, allow_unused=True)
            for name, (qa, qg) in bases.items():
                grad = sum(qg.T @ g.T @ a @ qa for a, g in recorder.pairs(name))
                lam[name] = lam[name] + grad**2
    finally:
        recorder.close()
    count = max(len(rows), 1)
    linear = {
        k: (qa, qg, _as_tensor(lam[k], qg, qa) / count, layers[k][1])
        for k, (qa, qg) in bases.items()
    }
    info = {
        "rows": len(rows),
        "build_s": round(time.perf_counter() - began, 3),
        "linear_layers": len(linear),
        "diagonal_tensors": len(diag),
    }
    return EKFAC(linear, {k: d / count for k, d in diag.items()}, info)


def _eigvecs(matrix: Any) -> torch.Tensor:
    if not isinstance(matrix, torch.Tensor):  # a layer no row reached
        raise E2URecError("a layer of the edited parameters was not used by the model")
    return torch.linalg.eigh(matrix)[1]


def _as_tensor(value: Any, qg: torch.Tensor, qa: torch.Tensor) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    return torch.zeros(qg.shape[0], qa.shape[0], dtype=torch.float64)
