"""E2URec pieces on hand-made tensors and a tiny model: forced teachers, weighting, schedule,
cached teachers, the membership stop rule, the direction warning; whole runs on a tiny prepared
folder with a holdout split."""

from __future__ import annotations

import copy
import json
import logging
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from e2urec import cli
from e2urec.artifacts import sha256_file
from e2urec.backbones import create_recommender
from e2urec.data.dataset import load_split
from e2urec.data.prepare import PrepareConfig, prepare
from e2urec.data.synthetic import generate, write_ml1m
from e2urec.errors import E2URecError
from e2urec.eval.scoring import answer_tokens, logit_margin
from e2urec.methods.e2urec import (
    E2URecParams,
    E2URecTask,
    TeacherCache,
    Teachers,
    add_lora,
    combine,
    retain_rows_repeat,
)
from e2urec.methods.e2urec_membership import (
    MembershipMonitor,
    direction_warning,
    membership_verdict,
)
from e2urec.methods.e2urec_teachers import (
    TEACHERS,
    TeacherSpec,
    contrastive_teacher,
    forced_teacher,
    holdout_teacher,
    label_teacher,
    quantile_match,
)
from e2urec.runs import load_run_model
from e2urec.train.loop import LoopConfig, fit
from e2urec.train.losses import answer_ce, soft_ce
from e2urec.train.recipes import SupervisedTask, train
from e2urec.unlearn import unlearn

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
    # remember=labels: the retain part is the CE on retained labels alone
    assert float(combine(h_f, ce_r, None, 0.6)) == pytest.approx(0.6 * float(ce_r) + 0.4 * 2.0)
    with pytest.raises(E2URecError, match="remember must be one of original, labels"):
        E2URecParams(remember="teacher")


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


# ---------------------------------------------------------------- the other forgetting teachers
def test_contrastive_teacher_cancels_the_shift_the_control_shares():
    z_orig = torch.tensor([0.0, 1.0, 2.0, -1.0])
    z_aug = torch.tensor([1.0, 0.0, 2.0, 0.5])
    z_ctrl = torch.tensor([1.0, 0.0, 1.0, 1.0])
    # forget-specific shift: aug − ctrl = [0, 0, 1, −0.5] → only the third logit is forced
    expected = torch.tensor([0.0, 1.0, 2.0 - 2 * 1.0, -1.0])
    assert torch.allclose(contrastive_teacher(z_orig, z_aug, z_ctrl, 2.0), expected)
    # a control that shifts exactly like the augmented model: nothing left to force
    assert torch.equal(contrastive_teacher(z_orig, z_aug, z_aug, 2.0), z_orig)
    # a control that did not move: the paper's teacher
    assert torch.allclose(
        contrastive_teacher(z_orig, z_aug, z_orig, 2.0), forced_teacher(z_orig, z_aug, 2.0)
    )


def test_label_teacher_lowers_only_the_trained_answer_at_the_first_position():
    z = torch.arange(2 * 2 * 5, dtype=torch.float32).reshape(2, 2, 5)
    trained = torch.tensor([3, 1])
    out = label_teacher(z, trained, 1.5)
    changed = (out != z).nonzero().tolist()
    assert changed == [[0, 0, 3], [1, 0, 1]]
    assert out[0, 0, 3] == z[0, 0, 3] - 1.5 and out[1, 0, 1] == z[1, 0, 1] - 1.5
    assert torch.equal(z, torch.arange(20, dtype=torch.float32).reshape(2, 2, 5))  # untouched


def test_quantile_match_maps_forget_ranks_onto_holdout_margins():
    forget = torch.tensor([0.0, 1.0, 2.0, 3.0])
    holdout = torch.tensor([-1.0, 0.0, 1.0])
    mapped = quantile_match(torch.tensor([0.0, 1.0, 2.0, 3.0]), forget, holdout)
    # mid-rank quantiles 1/8, 3/8, 5/8, 7/8 → positions 0.25, 0.75, 1.25, 1.75 on the holdout
    assert torch.allclose(mapped, torch.tensor([-0.75, -0.25, 0.25, 0.75]))
    # same distributions: the identity on the forget margins' mid-ranks (interpolated)
    same = quantile_match(forget, forget, forget)
    assert torch.all(same[1:] > same[:-1]) and torch.allclose(same.mean(), forget.mean())
    # beyond the forget margins: the holdout extremes
    ends = quantile_match(torch.tensor([-9.0, 9.0]), forget, holdout)
    assert torch.allclose(ends, torch.tensor([-1.0, 1.0]))


def test_holdout_teacher_lowers_a_margin_to_its_target_and_never_raises_one():
    yes, no = 1, 2
    z = torch.zeros(3, 2, 4)
    z[:, 0, yes] = torch.tensor([3.0, 0.5, -1.0])
    trained = torch.tensor([yes, yes, no])
    other = torch.tensor([no, no, yes])
    target = torch.tensor([1.0, 2.0, 0.0])  # margins are 3, 0.5, 1
    out = holdout_teacher(z, trained, other, target)
    assert out[0, 0, yes] == pytest.approx(1.0)  # margin 3 → 1
    assert torch.equal(out[1], z[1])  # margin 0.5 already below its target 2
    assert out[2, 0, no] == pytest.approx(-1.0)  # margin of "no" 1 → 0
    assert torch.equal(out[:, 1], z[:, 1])


def test_membership_verdict_and_direction_warning():
    assert membership_verdict(0.51, 0.001, 0.5, 0.02, 0.05) == "MIA AUC 0.510 within 0.02 of 0.500"
    assert membership_verdict(0.60, 0.2, 0.5, 0.02, 0.05) == "KS p 0.200 ≥ 0.05"
    assert membership_verdict(0.60, 0.01, 0.5, 0.02, 0.05) is None
    assert membership_verdict(0.60, 0.2, 0.5, 0.02, 0.05, needs="all") is None
    assert membership_verdict(0.49, 0.2, 0.5, 0.02, 0.05, needs="all").count(";") == 1
    assert membership_verdict(0.55, 0.01, 0.56, 0.02, 0.05) is not None  # holdout-level target
    away = direction_warning("paper", {"original": 0.62, "forgetting_teacher": 0.83}, 0.56)
    assert away.startswith("the paper forgetting teacher moves") and "0.620 -> 0.830" in away
    assert direction_warning("paper", {"original": 0.62, "forgetting_teacher": 0.58}, 0.56) is None
    # overshooting past the holdout mean by less than the original's gap is still closer
    assert direction_warning("label", {"original": 0.62, "forgetting_teacher": 0.51}, 0.56) is None
    assert direction_warning("label", {}, 0.56) is None


def test_params_name_the_valid_choices():
    with pytest.raises(E2URecError, match="unknown e2urec teacher 'nope'; valid: contrastive"):
        E2URecParams(teacher="nope")
    with pytest.raises(E2URecError, match="stop must be one of budget, membership"):
        E2URecParams(stop="never")
    with pytest.raises(E2URecError, match="check_every"):
        E2URecParams(check_every=0)
    assert E2URecParams().teacher == "paper" and E2URecParams().stop == "budget"
    assert E2URecParams(teacher="holdout").needs_holdout() == "teacher=holdout"
    assert E2URecParams(stop="membership").needs_holdout() == "stop=membership"
    assert E2URecParams(teacher="contrastive").needs_holdout() is None


def make_teachers(setup, name):
    recommender, student, augmented, params = setup
    control = copy.deepcopy(augmented)
    with torch.no_grad():
        for p in control.parameters():
            p.add_(0.05 * torch.randn_like(p))
    matched = (torch.linspace(-1.0, 1.0, 7), torch.linspace(-2.0, 0.0, 5))
    return Teachers(
        recommender, student, augmented, 1.0, teacher=name, control=control, matched=matched
    )


@pytest.mark.parametrize("name", TEACHERS.names())
def test_every_teacher_is_cached_like_it_is_recomputed(setup, name):
    recommender, student, _, _ = setup
    teachers = make_teachers(setup, name)
    forget = batch(recommender, rows(4))
    z_f, labels = teachers.forgetting(forget)
    z_o, _ = teachers.original(forget)
    assert z_f.shape == z_o.shape and not torch.allclose(z_f, z_o)
    if name in ("label", "holdout"):  # only the trained answer's logit at the first position
        differs = (z_f != z_o).nonzero()
        assert set(differs[:, 1].tolist()) == {0}
        assert all(int(labels[b, 0]) == v for b, _, v in differs.tolist())
    cached = TeacherCache(teachers.forgetting, enabled=True)
    cached.fill(recommender, rows(4), 3, torch.device("cpu"))
    assert torch.allclose(torch.softmax(cached(forget), -1), torch.softmax(z_f, -1), atol=1e-3)
    expected = {"original", "forgetting_teacher", *TEACHERS.get(name).models}
    assert set(teachers.forget_p_yes()) == expected
    teachers.release()
    if TEACHERS.get(name).models:
        with pytest.raises(RuntimeError, match="released"):
            teachers.forgetting(forget)


def expected_teacher(name, z_orig, labels, recommender, frozen, alpha, matched):
    """Each registered teacher's formula, written out from the pure functions."""
    trained, other = answer_tokens(labels, recommender.yes_id, recommender.no_id)
    if name == "paper":
        return forced_teacher(z_orig, frozen["augmented"], alpha)
    if name == "contrastive":
        return contrastive_teacher(z_orig, frozen["augmented"], frozen["control"], alpha)
    if name == "label":
        return label_teacher(z_orig, trained, alpha)
    target = quantile_match(logit_margin(z_orig, trained, other), *matched)
    return holdout_teacher(z_orig, trained, other, target)


@pytest.mark.parametrize("name", TEACHERS.names())
def test_each_teacher_computes_its_own_formula(setup, name):
    recommender = setup[0]
    teachers = make_teachers(setup, name)
    forget = batch(recommender, rows(4))
    z_f, labels = teachers.forgetting(forget)
    z_orig, _ = teachers.original(forget)
    frozen = {m: teachers._frozen(m, forget) for m in ("augmented", "control")}
    expected = expected_teacher(name, z_orig, labels, recommender, frozen, 1.0, teachers.matched)
    assert torch.equal(z_f, expected)


def test_a_new_teacher_gets_its_own_function_not_another_teachers(setup, monkeypatch):
    """Before, `Teachers.forgetting` branched on names and its last `else` (the holdout
    formula) caught any teacher registered later."""
    recommender, student, _, _ = setup
    seen = []

    def halved(inputs):
        seen.append(sorted(inputs.frozen))
        return inputs.z_orig * 0.5

    monkeypatch.setitem(TEACHERS._items, "halved", TeacherSpec((), False, "z_orig / 2", halved))
    monkeypatch.setitem(TEACHERS._meta, "halved", {})
    teachers = Teachers(recommender, student, None, 1.0, teacher="halved")
    forget = batch(recommender, rows(4))
    z_f, _ = teachers.forgetting(forget)
    assert torch.equal(z_f, teachers.original(forget)[0] * 0.5) and seen == [[]]


def test_unknown_or_incomplete_teachers_are_refused(setup, monkeypatch):
    recommender, student, augmented, _ = setup
    with pytest.raises(TypeError):
        TeacherSpec((), False, "a spec without its function")
    with pytest.raises(TypeError, match="logits must be a function"):
        TeacherSpec((), False, "a spec whose function is not one", None)
    with pytest.raises(E2URecError, match="unknown e2urec teacher 'nope'"):
        Teachers(recommender, student, augmented, 1.0, teacher="nope")
    with pytest.raises(E2URecError, match="needs the augmented and control model"):
        Teachers(recommender, student, None, 1.0, teacher="contrastive")
    with pytest.raises(E2URecError, match="needs the matched forget/holdout margins"):
        Teachers(recommender, student, augmented, 1.0, teacher="holdout")
    # a function reading a model its spec does not list never gets one
    sneaky = TeacherSpec((), False, "reads the augmented model", lambda x: x.model("augmented"))
    monkeypatch.setitem(TEACHERS._items, "sneaky", sneaky)
    monkeypatch.setitem(TEACHERS._meta, "sneaky", {})
    teachers = Teachers(recommender, student, augmented, 1.0, teacher="sneaky")
    with pytest.raises(E2URecError, match="reads the augmented model its spec omits"):
        teachers.forgetting(batch(recommender, rows(4)))
    needs_margins = TeacherSpec((), False, "reads margins", lambda x: x.margins()[0])
    monkeypatch.setitem(TEACHERS._items, "unmatched", needs_margins)
    monkeypatch.setitem(TEACHERS._meta, "unmatched", {})
    teachers = Teachers(recommender, student, augmented, 1.0, teacher="unmatched")
    with pytest.raises(E2URecError, match="needs the matched forget/holdout margins"):
        teachers.forgetting(batch(recommender, rows(4)))


# ---------------------------------------------------------------- the membership stop rule
class ShiftedAnswers(nn.Module):
    """A stand-in seq2seq model: noise logits, plus `shift` on the Yes token."""

    def __init__(self, vocab: int, yes_id: int):
        super().__init__()
        self.vocab, self.yes_id, self.shift = vocab, yes_id, 3.0
        self.generator = torch.Generator().manual_seed(0)

    def forward(self, input_ids, attention_mask, labels):
        logits = torch.randn(*labels.shape, self.vocab, generator=self.generator)
        logits[:, 0, self.yes_id] += self.shift
        return SimpleNamespace(logits=logits)


def test_membership_monitor_stops_once_forget_rows_look_like_holdout_rows(setup):
    recommender = setup[0]
    forget = [{**r, "target": "Yes.", "label": 1} for r in rows(64)]
    holdout = [{**r, "target": "No.", "label": 0} for r in rows(64, 1)]
    params = E2URecParams(check_rows=48, check_every=2, stop="membership")
    rule = params.membership_rule()
    monitor = MembershipMonitor(recommender, forget, holdout, rule, 0, torch.device("cpu"))
    model = ShiftedAnswers(len(recommender.tokenizer), recommender.yes_id)
    assert len(monitor.forget) == len(monitor.holdout) == 48
    with torch.no_grad():  # trained answers: Yes on forget rows, sure of it; No on holdout rows
        assert not monitor.start(lambda b: recommender.target_logits(b, model))
    first = monitor.checks[0]
    assert first["step"] == 0 and first["mia_auc"] > 0.9 and first["ks_p"] < 0.05
    model.shift = 0.0  # the forget rows' answers are no longer favoured
    assert not monitor(model, 1) and len(monitor.checks) == 1  # not a check step
    assert monitor(model, 2) and model.training  # the mode is restored
    summary = monitor.summary(2)
    assert summary["stopped_by"] == "membership" and summary["step"] == 2
    assert summary["ks_p"] >= 0.05 and "KS p" in summary["reason"]
    assert summary["target_auc"] == 0.5 and 0.0 <= summary["holdout_halves_auc"] <= 1.0
    assert summary["rows"] == {"forget": 48, "holdout": 48} and len(summary["checks"]) == 2


def test_fit_ends_where_the_stop_hook_says(setup, tmp_path):
    corpus = [WORDS, "Yes.", "No."]
    recommender = create_recommender("t5-tiny", corpus, seed=0)
    seen = []

    def stop(model, step):
        seen.append((step, model.training))
        return step == 3

    result = fit(
        recommender,
        recommender.model,
        SupervisedTask(recommender, rows(40)),
        LoopConfig(epochs=3, batch_size=4, lr=1e-3),
        tmp_path,
        stop=stop,
    )
    assert result.steps == 3 and result.epochs_run == 1
    assert seen == [(1, True), (2, True), (3, True)]
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert {"phase": "train", "event": "stop", "step": 3, "epoch": 0} in log


# ---------------------------------------------------------------- whole runs with a holdout split
@pytest.fixture(scope="module")
def holdout_world(tmp_path_factory) -> dict[str, Path]:
    """A tiny prepared folder plus a `holdout` split (rows of the test split: never trained
    on), a tiny original run trained on it, and the same folder without the holdout."""
    root = tmp_path_factory.mktemp("e2urec-holdout")
    write_ml1m(generate(n_users=40, n_items=60, n_ratings=1500, seed=0), root / "raw")
    config = PrepareConfig(
        dataset="synthetic", out=str(root / "plain"), raw=str(root / "raw"), last_n=200,
        history_len=3, forget_ratio=0.2,
    )  # fmt: skip
    prepare(config)
    data = root / "data"
    shutil.copytree(root / "plain", data)
    test_rows = (data / "test.jsonl").read_text().splitlines()
    (data / "holdout.jsonl").write_text("".join(f"{line}\n" for line in test_rows[:24]))
    manifest = json.loads((data / "manifest.json").read_text())
    manifest["splits"].append("holdout")
    manifest["files"]["holdout.jsonl"] = {
        "sha256": sha256_file(data / "holdout.jsonl"),
        "samples": 24,
    }
    (data / "manifest.json").write_text(json.dumps(manifest))
    train(data, "train", "t5-tiny", root / "original", epochs=1, max_steps=2)
    train(root / "plain", "train", "t5-tiny", root / "plain-original", epochs=1, max_steps=2)
    return {"root": root, "data": data, "original": root / "original", "plain": root / "plain"}


QUICK = ["max_steps=3", "aug_epochs=1", "batch_size=8"]


def forget_logits(run: Path, data: Path) -> torch.Tensor:
    model = load_run_model(run)
    forget = load_split(data, "forget").to_dict("records")[:8]
    with torch.no_grad():
        return model.answer_logits(model.recommender.collate(forget))


def test_contrastive_teacher_with_the_membership_stop_rule(holdout_world):
    w = holdout_world
    sets = QUICK + ["teacher=contrastive", "stop=membership", "check_every=1", "check_rows=8"]
    sets += ["mia_tol=0", "ks_alpha=0.999999"]  # never passes: the budget ends it
    manifest = unlearn("e2urec", w["original"], w["data"], w["root"] / "contrastive", sets)
    cost = manifest["cost"]
    assert {"augmented_model", "control_model", "teacher_cache", "student"} <= set(cost["phases"])
    assert cost["optimizer_steps"] == 3 + 2 * 3  # student + augmented and control (aug_epochs 1)
    assert set(manifest["forget_p_yes"]) == {
        "original",
        "augmented",
        "control",
        "forgetting_teacher",
    }
    assert 0.0 < manifest["holdout_p_yes"]["original"] < 1.0
    assert manifest["direction_check"] in ("ok", "away from the holdout users")
    assert ("warnings" in manifest) == (manifest["direction_check"] != "ok")
    stop = manifest["stop"]
    assert stop["rule"] == "membership" and stop["stopped_by"] == "budget" and stop["step"] == 3
    assert [c["step"] for c in stop["checks"]] == [0, 1, 2, 3]
    assert stop["rows"] == {"forget": 8, "holdout": 8} and 0.0 <= stop["mia_auc"] <= 1.0


def test_membership_rule_that_already_holds_keeps_the_original(holdout_world):
    w = holdout_world
    sets = QUICK + ["stop=membership", "check_rows=8", "mia_tol=1", "mia_target=holdout"]
    out = w["root"] / "already"
    manifest = unlearn("e2urec", w["original"], w["data"], out, sets)
    stop = manifest["stop"]
    assert stop["stopped_by"] == "membership" and stop["step"] == 0
    assert stop["target_auc"] == stop["holdout_halves_auc"]
    assert manifest["cost"]["optimizer_steps"] == 0
    assert "augmented_model" not in manifest["cost"]["phases"]  # nothing was built
    before, after = forget_logits(w["original"], w["data"]), forget_logits(out, w["data"])
    assert torch.allclose(before, after, atol=1e-5)


@pytest.mark.parametrize("teacher", ["label", "holdout"])
def test_teachers_without_tuned_copies_train_no_augmented_model(holdout_world, teacher):
    w = holdout_world
    out = w["root"] / f"teacher-{teacher}"
    first = unlearn("e2urec", w["original"], w["data"], out, QUICK + [f"teacher={teacher}"])
    assert "augmented_model" not in first["cost"]["phases"]
    assert set(first["forget_p_yes"]) == {"original", "forgetting_teacher"}
    assert first["stop"] == {"rule": "budget", "stopped_by": "budget", "step": 3}
    again = unlearn(
        "e2urec", w["original"], w["data"], out, QUICK + [f"teacher={teacher}"], overwrite=True
    )
    assert again["forget_p_yes"] == first["forget_p_yes"]  # seeded adapters: same run
    assert not torch.allclose(
        forget_logits(w["original"], w["data"]), forget_logits(out, w["data"])
    )


def test_holdout_settings_without_a_holdout_split_fail_before_writing(holdout_world, capsys):
    w = holdout_world
    out = w["root"] / "never-written"
    plain_run = w["root"] / "plain-original"
    for setting in ("stop=membership", "teacher=holdout"):
        args = ["unlearn", "--method", "e2urec", "--from", str(plain_run)]
        args += ["--data", str(w["plain"]), "--out", str(out), "--set", setting]
        assert cli.main(args) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1
        assert (
            f"e2urec {setting} needs a holdout split: prepare the data with --holdout-ratio" in err
        )
    args = ["unlearn", "--method", "e2urec", "--from", str(plain_run), "--data", str(w["plain"])]
    assert cli.main([*args, "--out", str(out), "--set", "teacher=nope"]) == 2
    assert "valid: contrastive, holdout, label, paper" in capsys.readouterr().err
    assert not out.exists()
    # the paper's teacher runs and says the direction check was skipped
    assert (
        cli.main(
            [
                *args,
                "--out",
                str(w["root"] / "plain-e2urec"),
                *sum((["--set", s] for s in QUICK), []),
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "direction check skipped: needs a holdout split" in printed


def test_unlearn_prints_the_warning_on_stderr(monkeypatch, capsys):
    from e2urec import api

    manifest = {
        "format": "adapter",
        "cost": {"optimizer_steps": 2, "wall_s": 1.0, "trainable_params": 10, "trainable_pct": 1},
        "forget_p_yes": {"original": 0.62, "forgetting_teacher": 0.83},
        "holdout_p_yes": {"original": 0.56},
        "warnings": ["the paper forgetting teacher moves it away"],
        "stop": {"rule": "membership", "step": 2, "stopped_by": "membership", "reason": "KS p"},
    }

    def unlearn(*args, **kwargs):  # the method logs its warning while it runs
        logging.getLogger("e2urec.methods.e2urec_membership").warning(manifest["warnings"][0])
        return manifest

    monkeypatch.setattr(api, "unlearn", unlearn)
    args = ["unlearn", "--method", "e2urec", "--from", "x", "--data", "y", "--out", "z"]
    assert cli.main(args) == 0
    captured = capsys.readouterr()
    assert captured.err == "warning: the paper forgetting teacher moves it away\n"
    assert "holdout users, mean P(Yes): original 0.560" in captured.out
    assert "stopped at step 2 by membership: KS p" in captured.out


def test_direction_warning_is_logged_before_the_student_trains(holdout_world, monkeypatch, caplog):
    import e2urec.methods.e2urec_membership as membership
    import e2urec.train.loop as loop

    w = holdout_world
    real_fit, seen = loop.fit, []
    monkeypatch.setattr(membership, "direction_warning", lambda *a: "pushes the wrong way")

    def fit(*args, **kwargs):
        seen.append([r.getMessage() for r in caplog.records])
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(loop, "fit", fit)
    with caplog.at_level(logging.WARNING, logger="e2urec"):
        manifest = unlearn("e2urec", w["original"], w["data"], w["root"] / "warned", QUICK)
    assert seen[-1] == ["pushes the wrong way"]  # the student's fit: the warning came first
    assert manifest["warnings"] == ["pushes the wrong way"]
