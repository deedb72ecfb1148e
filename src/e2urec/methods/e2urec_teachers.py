"""E2URec's forgetting teachers: pure functions of frozen models' logits, registered by name.

Each teacher turns the original's logits `z_orig` [B, T, V] (and, for some, the augmented or
control model's) into the forgetting teacher's logits the student is distilled towards on the
forget set. `paper` is the paper's `z_orig − α·ReLU(z_aug − z_orig)`; the others address its
measured failure at small scale (it mirrors the augmented model's recalibration of the Yes-bias
instead of removing memorised answers): see each function and TEACHERS.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from e2urec.errors import E2URecError
from e2urec.eval.scoring import logit_margin
from e2urec.registry import Registry


def forced_teacher(z_orig: torch.Tensor, z_aug: torch.Tensor, alpha: float) -> torch.Tensor:
    """Forgetting-teacher logits: z_orig − α·ReLU(z_aug − z_orig)."""
    return z_orig - alpha * F.relu(z_aug - z_orig)


def contrastive_teacher(
    z_orig: torch.Tensor, z_aug: torch.Tensor, z_ctrl: torch.Tensor, alpha: float
) -> torch.Tensor:
    """z_orig − α·ReLU((z_aug − z_orig) − (z_ctrl − z_orig)): only the shift that tuning on the
    forget set adds beyond tuning a control copy on as many retained rows (the shift both share,
    e.g. a generic recalibration, cancels)."""
    return z_orig - alpha * F.relu((z_aug - z_orig) - (z_ctrl - z_orig))


def lower_answer_logit(
    z: torch.Tensor, trained: torch.Tensor, amount: torch.Tensor
) -> torch.Tensor:
    """A copy of z [B, T, V] with each row's trained-answer logit at the first answer position
    lowered by `amount` [B]; every other logit unchanged."""
    out = z.clone()
    rows = torch.arange(len(z), device=z.device)
    out[rows, 0, trained] = out[rows, 0, trained] - amount.to(z.dtype)
    return out


def label_teacher(z_orig: torch.Tensor, trained: torch.Tensor, alpha: float) -> torch.Tensor:
    """UNDIAL's adjusted logits (Dong et al., arXiv 2402.10052: the original's logits with the
    trained token's logit lowered by a fixed γ), at the one token that carries the answer: the
    first answer position (the "." and end tokens after it are the same for Yes and No rows)."""
    return lower_answer_logit(z_orig, trained, torch.full_like(trained, alpha, dtype=z_orig.dtype))


def quantile_match(
    margins: torch.Tensor, forget_sorted: torch.Tensor, holdout_sorted: torch.Tensor
) -> torch.Tensor:
    """Q_holdout(F_forget(m)): each margin's mid-rank quantile among the (sorted) forget
    margins, read off the (sorted) holdout margins by linear interpolation; monotone in m."""
    forget_sorted = forget_sorted.to(margins.device, torch.float32)
    holdout_sorted = holdout_sorted.to(margins.device, torch.float32)
    margins = margins.float().contiguous()
    below = torch.searchsorted(forget_sorted, margins, right=False)
    at_most = torch.searchsorted(forget_sorted, margins, right=True)
    quantile = (below + at_most).float() / (2 * len(forget_sorted))
    position = quantile * (len(holdout_sorted) - 1)
    low = position.floor().long().clamp(0, len(holdout_sorted) - 1)
    high = (low + 1).clamp(max=len(holdout_sorted) - 1)
    weight = position - low.float()
    return holdout_sorted[low] * (1 - weight) + holdout_sorted[high] * weight


def holdout_teacher(
    z_orig: torch.Tensor, trained: torch.Tensor, other: torch.Tensor, target: torch.Tensor
) -> torch.Tensor:
    """Lower each row's trained-answer logit so its margin is min(margin, target): forget rows
    more sure of their trained answer than the matched holdout quantile are pulled down to it,
    the others are left as the original has them (never pushed towards the trained answer)."""
    excess = F.relu(logit_margin(z_orig, trained, other) - target.float())
    return lower_answer_logit(z_orig, trained, excess)


@dataclass(frozen=True)
class TeacherInputs:
    """What a forgetting teacher reads for one batch: the original's logits [B, T, V], each
    row's trained and other answer token [B], the logits of the frozen models its spec lists
    (by name), the strength α and, for teachers that need them, the matched margins (sorted
    forget margins, sorted holdout margins) of the original."""

    z_orig: torch.Tensor
    trained: torch.Tensor
    other: torch.Tensor
    frozen: dict[str, torch.Tensor]
    alpha: float
    matched: tuple[torch.Tensor, torch.Tensor] | None = None

    def model(self, name: str) -> torch.Tensor:
        """The logits of frozen model `name`; one a teacher's spec does not list is an error."""
        if name not in self.frozen:
            raise E2URecError(f"this forgetting teacher reads the {name} model its spec omits")
        return self.frozen[name]

    def margins(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The matched (forget, holdout) margins; a teacher given none is an error."""
        if self.matched is None:
            raise E2URecError("this forgetting teacher needs the matched forget/holdout margins")
        return self.matched


def _paper(x: TeacherInputs) -> torch.Tensor:
    return forced_teacher(x.z_orig, x.model("augmented"), x.alpha)


def _contrastive(x: TeacherInputs) -> torch.Tensor:
    return contrastive_teacher(x.z_orig, x.model("augmented"), x.model("control"), x.alpha)


def _label(x: TeacherInputs) -> torch.Tensor:
    return label_teacher(x.z_orig, x.trained, x.alpha)


def _holdout(x: TeacherInputs) -> torch.Tensor:
    target = quantile_match(logit_margin(x.z_orig, x.trained, x.other), *x.margins())
    return holdout_teacher(x.z_orig, x.trained, x.other, target)


@dataclass(frozen=True)
class TeacherSpec:
    """A forgetting teacher: the frozen models it reads beside the original, whether it needs
    the holdout users' margins, its formula (recorded in the run's manifest) and the function
    that computes its logits from a batch's `TeacherInputs` (a spec without one is refused)."""

    models: tuple[str, ...]
    holdout: bool
    formula: str
    logits: Callable[[TeacherInputs], torch.Tensor]

    def __post_init__(self) -> None:
        if not callable(self.logits):
            raise TypeError(f"teacher {self.formula!r}: logits must be a function of inputs")


TEACHERS: Registry[TeacherSpec] = Registry("e2urec teacher")
for _name, _spec in {
    "paper": TeacherSpec(("augmented",), False, "z_orig − α·ReLU(z_aug − z_orig)", _paper),
    "contrastive": TeacherSpec(
        ("augmented", "control"),
        False,
        "z_orig − α·ReLU((z_aug − z_orig) − (z_ctrl − z_orig))",
        _contrastive,
    ),
    "label": TeacherSpec((), False, "z_orig with the trained answer's logit lowered by α", _label),
    "holdout": TeacherSpec(
        (),
        True,
        "z_orig with the trained answer's margin lowered to the holdout quantile",
        _holdout,
    ),
}.items():
    TEACHERS.register(_name)(_spec)
