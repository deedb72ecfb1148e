"""The one scoring module: batches in row order, named losses on hand-made distributions, and
the one membership-inference function every consumer calls with the loss it names."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from e2urec.backbones import create_recommender
from e2urec.errors import E2URecError
from e2urec.eval import evidence, metrics, scoring
from e2urec.methods.e2urec import E2URecParams
from e2urec.methods.e2urec_membership import MembershipMonitor

PROMPTS = ["a b c d e f", "a", "a b c", "a b", "a b c d"]


@pytest.fixture(scope="module")
def recommender():
    recommender = create_recommender("t5-tiny", [*PROMPTS, "Yes.", "No."], seed=0)
    recommender.model.eval()
    return recommender


def rows(n: int = 5) -> list[dict]:
    return [
        {"prompt": PROMPTS[i % 5], "target": "Yes." if i % 2 else "No.", "label": i % 2}
        for i in range(n)
    ]


class FixedAnswers(nn.Module):
    """A stand-in seq2seq model: per row (by its input length), hand-made first-position logits."""

    def __init__(self, vocab: int, table: dict[int, torch.Tensor]):
        super().__init__()
        self.vocab, self.table = vocab, table

    def forward(self, input_ids, attention_mask, labels):
        lengths = attention_mask.sum(1).tolist()
        logits = torch.zeros(*labels.shape, self.vocab)
        for b, length in enumerate(lengths):
            logits[b, 0] = self.table[length]
        return SimpleNamespace(logits=logits)


def test_row_batches_cover_every_row_once_on_the_device(recommender):
    data = rows(5)
    for by_length in (False, True):
        seen = []
        for index, batch in scoring.row_batches(recommender, data, 2, "cpu", by_length):
            assert len(batch["input_ids"]) == len(index) and batch["input_ids"].device.type == "cpu"
            seen += index
        assert sorted(seen) == list(range(5))
    with pytest.raises(E2URecError, match="batch size must be at least 1"):
        next(scoring.row_batches(recommender, data, 0))


def test_named_losses_on_a_hand_made_distribution():
    first = torch.log(torch.tensor([[0.6, 0.3, 0.1], [0.2, 0.2, 0.6]]))
    trained = torch.tensor([0, 1])
    vocab = scoring.loss_vocab(first + 5.0, trained)  # any shift of the log-probabilities
    assert torch.allclose(vocab, torch.tensor([-math.log(0.6), -math.log(0.2)]), atol=1e-6)
    expected = -torch.log_softmax(first, -1).gather(1, trained[:, None])[:, 0]
    assert torch.equal(scoring.loss_vocab(first, trained), expected)  # bit for bit
    # the two-way loss renormalises over Yes/No: row 0 P(yes) = 2/3, row 1 (trained no) 1/2
    yes_no = scoring.loss_yes_no([1, 0], [2 / 3, 0.5])
    assert yes_no == pytest.approx([math.log(1.5), math.log(2.0)])


def test_score_stats_in_row_order_with_both_losses(recommender):
    yes, no = recommender.yes_id, recommender.no_id
    data = rows(5)
    vocab = len(recommender.tokenizer)
    table = {}
    for i, r in enumerate(data):
        length = len(recommender.collate([r])["input_ids"][0])
        logits = torch.full((vocab,), -30.0)
        logits[yes], logits[no], logits[2] = math.log(0.1 * (i + 1)), math.log(0.2), 0.0
        table[length] = logits
    assert len(table) == 5  # one logit row per prompt length
    model = FixedAnswers(vocab, table)
    stats = scoring.score_stats(
        recommender, lambda b: recommender.target_logits(b, model), data, 2, "cpu", True
    )
    for i, r in enumerate(data):
        p = {yes: 0.1 * (i + 1), no: 0.2}
        z = sum(p.values()) + 1.0 + (vocab - 3) * math.exp(-30.0)
        trained, other = (yes, no) if r["label"] else (no, yes)
        assert stats["label"][i] == r["label"]
        assert stats["p_yes"][i] == pytest.approx(p[yes] / (p[yes] + p[no]), rel=1e-6)
        assert stats["margin"][i] == pytest.approx(math.log(p[trained] / p[other]), abs=1e-5)
        assert stats["loss_vocab"][i] == pytest.approx(-math.log(p[trained] / z), abs=1e-5)
        two_way = p[trained] / (p[yes] + p[no])
        assert stats["loss_yes_no"][i] == pytest.approx(-math.log(two_way), abs=1e-6)


def test_membership_auc_reads_the_named_loss():
    members = {"loss_vocab": np.array([0.1, 0.2]), "loss_yes_no": np.array([0.9, 0.8])}
    nonmembers = {"loss_vocab": np.array([0.5, 0.6]), "loss_yes_no": np.array([0.1, 0.2])}
    assert scoring.membership_auc(members, nonmembers, "vocab") == 1.0
    assert scoring.membership_auc(members, nonmembers, "yes_no") == 0.0
    with pytest.raises(E2URecError, match="unknown membership loss 'kl'; valid: vocab, yes_no"):
        scoring.membership_auc(members, nonmembers, "kl")
    with pytest.raises(E2URecError, match="non-members carry no 'vocab' loss"):
        scoring.membership_auc(members, {"loss_yes_no": np.ones(2)}, "vocab")


def test_every_consumer_calls_the_one_function_with_its_named_loss(recommender, monkeypatch):
    from e2urec.deploy import checks

    calls = []
    original = scoring.membership_auc

    def spy(members, nonmembers, loss):
        calls.append(loss)
        return original(members, nonmembers, loss)

    monkeypatch.setattr(scoring, "membership_auc", spy)
    losses = np.array([0.1, 0.9, 0.3])
    assert checks.mia_or_none(losses, losses + 1.0) == metrics.mia_auc(losses, losses + 1.0)
    table = pd.DataFrame({"label": [1, 0, 1], "p_yes": [0.9, 0.2, 0.4]})
    other = pd.DataFrame({"label": [0, 1, 1], "p_yes": [0.6, 0.3, 0.5]})
    before = metrics.mia_auc(
        metrics.answer_loss(table["label"], table["p_yes"]),
        metrics.answer_loss(other["label"], other["p_yes"]),
    )
    assert evidence.membership_auc(table, other) == before  # the bench's numbers, unchanged
    rule = E2URecParams(check_rows=4, stop="membership").membership_rule()
    monitor = MembershipMonitor(recommender, rows(4), rows(4), rule, 0, "cpu")
    with torch.no_grad():
        monitor.start(lambda b: recommender.target_logits(b))
    assert monitor.summary(0)["mia_loss"] == "vocab"
    assert calls == ["vocab", "yes_no", "vocab", "vocab"]  # checks, bench, stop rule (×2)
    assert checks.MIA_LOSS == "vocab" and evidence.MIA_LOSS == "yes_no"


def test_deploy_checks_score_like_the_scoring_module(recommender):
    from e2urec.deploy import checks

    run_model = SimpleNamespace(recommender=recommender)
    data = rows(5)
    loss, p_yes = checks.losses_and_p_yes(run_model, data, batch_size=2)
    stats = scoring.score_stats(
        recommender, lambda b: recommender.target_logits(b), data, 2, "cpu", by_length=True
    )
    assert np.array_equal(loss, stats["loss_vocab"]) and np.array_equal(p_yes, stats["p_yes"])
