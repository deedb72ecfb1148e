"""E2URec pieces on hand-made tensors and a tiny model: forced teacher, weighting, schedule,
cached teachers."""

from __future__ import annotations

import copy

import pytest
import torch

from e2urec.backbones import create_recommender
from e2urec.methods.e2urec import (
    E2URecParams,
    E2URecTask,
    TeacherCache,
    Teachers,
    add_lora,
    combine,
    forced_teacher,
    retain_rows_repeat,
)
from e2urec.train.losses import answer_ce, soft_ce

WORDS = "The user liked Hidden Harbor Silent River Golden Empire Lost Garden and disliked"


def rows(n: int, offset: int = 0) -> list[dict]:
    titles = ["Hidden Harbor", "Silent River", "Golden Empire", "Lost Garden"]
    return [
        {
            "prompt": f"The user liked {titles[(i + offset) % 4]} and disliked {titles[i % 3]}",
            "target": "Yes." if (i + offset) % 2 else "No.",
            "label": (i + offset) % 2,
        }
        for i in range(n)
    ]


@pytest.fixture(scope="module")
def setup():
    corpus = [WORDS, "Yes.", "No."] + [r["prompt"] for r in rows(8)]
    recommender = create_recommender("t5-tiny", corpus, seed=0)
    augmented = copy.deepcopy(recommender.model)
    with torch.no_grad():
        for p in augmented.parameters():
            p.add_(0.05 * torch.randn_like(p))
    augmented.eval()
    params = E2URecParams(lora_dropout=0.0)
    student = add_lora(recommender, params)
    with torch.no_grad():  # make the student differ from the original
        for name, p in student.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.05)
    return recommender, student, augmented, params


def batch(recommender, part, start=0):
    out = recommender.collate(part)
    out["index"] = torch.arange(start, start + len(part))
    return out


def test_forced_teacher_formula():
    z_orig = torch.tensor([0.0, 1.0, 2.0, -1.0])
    z_aug = torch.tensor([1.0, 0.0, 2.0, 0.5])
    expected = torch.tensor([0.0 - 2 * 1.0, 1.0, 2.0, -1.0 - 2 * 1.5])
    assert torch.allclose(forced_teacher(z_orig, z_aug, 2.0), expected)
    assert torch.equal(forced_teacher(z_orig, z_aug, 0.0), z_orig)


def test_weighting_and_forget_only_term():
    h_f, ce_r, h_r = torch.tensor(2.0), torch.tensor(0.5), torch.tensor(1.5)
    assert float(combine(h_f, ce_r, h_r, 0.6)) == pytest.approx(0.6 * 2.0 + 0.4 * 2.0)
    assert float(combine(h_f, ce_r, h_r, 1.0)) == pytest.approx(2.0)
    assert float(combine(h_f, None, None, 0.6)) == pytest.approx(2.0)


def test_first_epoch_is_forget_only_then_full_objective(setup):
    recommender, student, augmented, params = setup
    teachers = Teachers(recommender, student, augmented, params.alpha)
    task = E2URecTask(recommender, rows(4), rows(4, 1), teachers, params)
    forget, retain = batch(recommender, rows(4)), batch(recommender, rows(4, 1))
    student.eval()
    with torch.no_grad():
        first, logs = task.loss(student, {"forget": forget}, epoch=0)  # no retain batch needed
        assert set(logs) == {"h_forget"}
        second, logs = task.loss(student, {"forget": forget, "retain": retain}, epoch=1)
        logits, labels = recommender.target_logits(forget, student)
        z_f, _ = teachers.forgetting(forget)
        h_f = soft_ce(z_f, logits, labels)
        r_logits, r_labels = recommender.target_logits(retain, student)
        with student.disable_adapter():
            z_o, _ = recommender.target_logits(retain, student)
        expected = 0.6 * (answer_ce(r_logits, r_labels) + soft_ce(z_o, r_logits, r_labels))
        expected = expected + 0.4 * h_f
    assert float(first) == pytest.approx(float(h_f), rel=1e-3)
    assert float(second) == pytest.approx(float(expected), rel=1e-3)


def test_cached_teachers_match_recomputed(setup):
    recommender, student, augmented, params = setup
    teachers = Teachers(recommender, student, augmented, params.alpha)
    cached = E2URecTask(recommender, rows(6), rows(6, 1), teachers, params)
    fresh = E2URecTask(
        recommender, rows(6), rows(6, 1), teachers, E2URecParams(cache_teachers=False)
    )
    cached.forget_teacher.fill(recommender, rows(6), 4, torch.device("cpu"))
    assert len(cached.forget_teacher.rows) == 6
    assert all(t.dtype == torch.float16 for t in cached.forget_teacher.rows.values())
    batches = {
        "forget": batch(recommender, rows(6)[2:5], 2),
        "retain": batch(recommender, rows(6, 1)[:3]),
    }
    student.eval()
    with torch.no_grad():
        a, logs_a = cached.loss(student, batches, epoch=1)
        b, logs_b = fresh.loss(student, batches, epoch=1)
    assert len(cached.retain_teacher.rows) == 3  # filled on first use
    assert float(a) == pytest.approx(float(b), rel=1e-3)
    for key in logs_b:
        assert logs_a[key] == pytest.approx(logs_b[key], rel=1e-3)


def test_teacher_cache_pads_rows_of_different_answer_lengths():
    calls = []

    def compute(b):
        calls.append(1)
        logits = torch.randn(2, 3, 5)
        labels = torch.tensor([[1, 2, -100], [1, 2, 3]])
        return logits, labels

    cache = TeacherCache(compute, enabled=True)
    b = {"index": torch.tensor([0, 1]), "input_ids": torch.zeros(2, 1)}
    first = cache(b)
    second = cache(b)
    assert len(calls) == 1 and first.shape == (2, 3, 5)
    assert torch.equal(first, second) and torch.all(first[0, 2] == 0)


def test_retain_cache_only_when_the_schedule_repeats_retained_rows():
    params = E2URecParams(batch_size=16, epochs=2)
    # 100 forget rows -> 7 steps per epoch, 14 steps draw 224 retained rows
    assert not retain_rows_repeat(params, n_forget=100, n_retain=224, world=1)
    assert retain_rows_repeat(params, n_forget=100, n_retain=223, world=1)
    # two processes: 4 steps per epoch, each drawing 2 batches -> 256 rows
    assert retain_rows_repeat(params, n_forget=100, n_retain=255, world=2)
    assert not retain_rows_repeat(params, n_forget=100, n_retain=256, world=2)
    capped = E2URecParams(batch_size=16, epochs=2, max_steps=3)
    assert not retain_rows_repeat(capped, n_forget=100, n_retain=48, world=1)


def test_teachers_report_which_way_the_forgetting_teacher_pushes(setup):
    recommender, student, augmented, params = setup
    teachers = Teachers(recommender, student, augmented, params.alpha)
    assert teachers.forget_p_yes() == {}
    forget = batch(recommender, rows(4))
    z_f, _ = teachers.forgetting(forget)
    with torch.no_grad(), student.disable_adapter():
        student.eval()
        z_o, _ = recommender.target_logits(forget, student)
    yes, no = recommender.yes_id, recommender.no_id
    means = teachers.forget_p_yes()
    expected = {
        "original": torch.sigmoid(z_o[:, 0, yes] - z_o[:, 0, no]).mean(),
        "forgetting_teacher": torch.sigmoid(z_f[:, 0, yes] - z_f[:, 0, no]).mean(),
    }
    for name, value in expected.items():
        assert means[name] == pytest.approx(float(value), abs=1e-4)
    assert means["augmented"] != pytest.approx(means["original"], abs=1e-4)
