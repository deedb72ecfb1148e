"""The gradient baselines against closed forms on hand-made distributions: NegGrad's, Bad-T's,
GradAscent's and NPO's losses, the signs of their updates, `sequence_logp`, `GradientTask.loss`
and `NPOTask.extra`. A stand-in recommender returns a learnable table of logits per row (the
log of hand-made probabilities at initialisation), so every value has a closed form."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from e2urec.backbones import IGNORE
from e2urec.methods import bad_t, gradascent, neggrad
from e2urec.methods.bad_t import BadTParams
from e2urec.methods.gradient import GradientTask, flip_answers, sequence_logp
from e2urec.methods.neggrad import NegGradParams
from e2urec.methods.npo import NPOParams, NPOTask

YES, NO = 0, 1  # token ids of the answers in a vocabulary of 3
# Per row: P(yes), P(no), P(other token) at the one answer position.
PROBS = [[0.6, 0.3, 0.1], [0.2, 0.7, 0.1], [0.5, 0.25, 0.25], [0.1, 0.1, 0.8]]


class TableModel(nn.Module):
    """Logits [N, 1, V] per row, a parameter initialised to log(PROBS)."""

    def __init__(self) -> None:
        super().__init__()
        self.table = nn.Parameter(torch.log(torch.tensor(PROBS))[:, None, :])

    def forward(self, index: torch.Tensor) -> torch.Tensor:
        return self.table[index]


class TableRecommender:
    """What the tasks use of a Recommender: collate rows, answer logits and labels."""

    def __init__(self) -> None:
        self.model = TableModel()
        self.yes_id, self.no_id = YES, NO

    def collate(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        labels = [[YES if r["target"] == "Yes." else NO] for r in rows]
        return {"index": torch.tensor([r["i"] for r in rows]), "labels": torch.tensor(labels)}

    def target_logits(self, batch, model=None):
        return (model or self.model)(batch["index"]), batch["labels"]


def row(i: int, answer: str) -> dict:
    return {"i": i, "prompt": f"row {i}", "target": answer, "label": int(answer == "Yes.")}


FORGET = [row(0, "Yes."), row(1, "No.")]  # trained answers have P 0.6 and 0.7
RETAIN = [row(2, "No."), row(3, "Yes.")]  # trained answers have P 0.25 and 0.1
CE_FORGET = -(math.log(0.6) + math.log(0.7)) / 2
CE_FORGET_FLIPPED = -(math.log(0.3) + math.log(0.2)) / 2
CE_RETAIN = -(math.log(0.25) + math.log(0.1)) / 2


def batches_of(recommender, task) -> dict[str, dict[str, torch.Tensor]]:
    return {name: recommender.collate(list(rows)) for name, rows in task.streams.items()}


def trained_p(recommender, rows: list[dict]) -> torch.Tensor:
    """P(trained answer) of each row under the current table."""
    logits, labels = recommender.target_logits(recommender.collate(rows))
    return torch.softmax(logits[:, 0], -1).gather(1, labels[:, :1])[:, 0].detach()


def step(recommender, task, lr: float = 0.5) -> None:
    """One plain gradient-descent step on the task's loss."""
    loss, _ = task.loss(recommender.model, batches_of(recommender, task), epoch=1)
    loss.backward()
    with torch.no_grad():
        for p in recommender.model.parameters():
            p -= lr * p.grad


def test_sequence_logp_sums_the_answer_tokens_and_skips_padding():
    probs = torch.tensor(
        [[[0.5, 0.25, 0.25], [0.2, 0.2, 0.6]], [[0.1, 0.6, 0.3], [1 / 3, 1 / 3, 1 / 3]]]
    )
    labels = torch.tensor([[0, 2], [1, IGNORE]])
    expected = torch.tensor([math.log(0.5) + math.log(0.6), math.log(0.6)])
    # logits are any shift of the log-probabilities
    assert torch.allclose(sequence_logp(torch.log(probs) + 3.0, labels), expected, atol=1e-6)


def test_gradient_task_loss_is_the_weighted_sum_plus_extra_terms():
    class WithExtra(GradientTask):
        def extra(self, model, batches):
            return {"bonus": torch.tensor(0.75)}

    recommender = TableRecommender()
    streams = {"retain": RETAIN, "forget": FORGET}
    task = WithExtra(recommender, streams, {"retain": 2.0, "forget": -0.5})
    loss, logs = task.loss(recommender.model, batches_of(recommender, task), epoch=0)
    assert loss.item() == pytest.approx(2.0 * CE_RETAIN - 0.5 * CE_FORGET + 0.75, rel=1e-6)
    assert logs["ce_retain"] == pytest.approx(CE_RETAIN, rel=1e-6)
    assert logs["ce_forget"] == pytest.approx(CE_FORGET, rel=1e-6)
    assert logs["bonus"] == 0.75
    assert GradientTask(recommender, streams, {}).extra(recommender.model, {}) == {}


def test_neggrad_loss_is_retain_ce_minus_weighted_forget_ce():
    recommender = TableRecommender()
    task = neggrad.make_task(recommender, FORGET, RETAIN, NegGradParams(forget_weight=0.3))
    loss, _ = task.loss(recommender.model, batches_of(recommender, task), epoch=0)
    assert loss.item() == pytest.approx(CE_RETAIN - 0.3 * CE_FORGET, rel=1e-6)
    before_forget, before_retain = trained_p(recommender, FORGET), trained_p(recommender, RETAIN)
    step(recommender, task)
    assert (trained_p(recommender, FORGET) < before_forget).all()  # ascent on forget
    assert (trained_p(recommender, RETAIN) > before_retain).all()  # descent on retain


def test_gradascent_ascends_the_forget_ce_only():
    recommender = TableRecommender()
    task = gradascent.make_task(recommender, FORGET)
    assert set(task.streams) == {"forget"}
    loss, _ = task.loss(recommender.model, batches_of(recommender, task), epoch=0)
    assert loss.item() == pytest.approx(-CE_FORGET, rel=1e-6)
    before = trained_p(recommender, FORGET)
    step(recommender, task)
    assert (trained_p(recommender, FORGET) < before).all()
    assert torch.equal(recommender.model.table[2:], torch.log(torch.tensor(PROBS[2:]))[:, None])


def test_bad_t_descends_towards_the_flipped_answers():
    recommender = TableRecommender()
    task = bad_t.make_task(recommender, FORGET, RETAIN, BadTParams(forget_weight=0.4))
    assert [r["target"] for r in task.streams["forget"]] == ["No.", "Yes."]
    assert flip_answers(flip_answers(FORGET)) == FORGET
    loss, _ = task.loss(recommender.model, batches_of(recommender, task), epoch=0)
    assert loss.item() == pytest.approx(CE_RETAIN + 0.4 * CE_FORGET_FLIPPED, rel=1e-6)
    before_forget, before_retain = trained_p(recommender, FORGET), trained_p(recommender, RETAIN)
    step(recommender, task)
    assert (trained_p(recommender, FORGET) < before_forget).all()  # the true answers lose
    assert (trained_p(recommender, RETAIN) > before_retain).all()


def npo_task(recommender, reference_shift: float, beta: float = 0.5) -> NPOTask:
    """NPO with π_ref = the table at initialisation, its log-likelihoods shifted by a constant."""
    forget = recommender.collate(FORGET)
    with torch.no_grad():
        reference = torch.zeros(len(PROBS))
        reference[forget["index"]] = sequence_logp(*recommender.target_logits(forget))
    params = NPOParams(beta=beta, retain_weight=1.5)
    return NPOTask(recommender, FORGET, RETAIN, reference + reference_shift, params)


def test_npo_at_initialisation_is_its_closed_form():
    recommender = TableRecommender()
    beta = 0.5
    task = npo_task(recommender, 0.0, beta)
    batches = batches_of(recommender, task)
    extra = task.extra(recommender.model, batches)
    assert extra["npo"].item() == pytest.approx(2.0 / beta * math.log(2.0), rel=1e-6)
    loss, logs = task.loss(recommender.model, batches, epoch=0)
    assert loss.item() == pytest.approx(1.5 * CE_RETAIN + 2.0 / beta * math.log(2.0), rel=1e-6)
    assert set(logs) == {"ce_retain", "npo"}  # forget enters through the NPO term only
    before = trained_p(recommender, FORGET)
    step(recommender, task)
    assert (trained_p(recommender, FORGET) < before).all()  # NPO lowers the forget likelihood


def test_npo_extra_follows_the_log_ratio_to_the_reference():
    """(2/β)·mean softplus(β·(log π_θ − log π_ref)): a reference δ higher gives
    (2/β)·softplus(−βδ)."""
    recommender = TableRecommender()
    beta, delta = 0.5, 1.2
    task = npo_task(recommender, delta, beta)
    extra = task.extra(recommender.model, batches_of(recommender, task))
    expected = 2.0 / beta * math.log1p(math.exp(-beta * delta))
    assert extra["npo"].item() == pytest.approx(expected, rel=1e-6)
