"""The paper presets carry the official code's values (github.com/justarter/E2URec, commit
4fc6c801), and their stop rules land near the official hand-picked checkpoints on ML-1M sizes."""

from __future__ import annotations

import pytest

from e2urec import presets
from e2urec.config import build
from e2urec.methods import METHODS
from e2urec.train.loop import planned_steps, steps_per_epoch

PAPER_PRESETS = ["paper-ml1m-t5base", "paper-goodreads-t5base"]
# split_ml-1m.ipynb prints "12982 47018": forget / retain rows of the paper's ML-1M split
FORGET_ROWS, RETAIN_ROWS = 12_982, 47_018


@pytest.fixture(params=PAPER_PRESETS)
def paper(request: pytest.FixtureRequest) -> presets.BenchConfig:
    return presets.resolve(request.param)


def params(config: presets.BenchConfig, method: str):
    """The method's params as the bench will build them (unknown keys would raise)."""
    return build(METHODS.get(method).params, config.method_params[method], f"method {method!r}")


def nearest_passes(official_step: int, batch_size: int) -> int:
    """Whole passes over the forget set whose step count is nearest to `official_step`."""
    per_pass = steps_per_epoch(FORGET_ROWS, batch_size, 1)
    return min(range(1, 20), key=lambda k: abs(k * per_pass - official_step))


def test_data_protocol(paper) -> None:
    d = paper.data
    assert d.last_n == 100_000  # split_ml-1m.ipynb: df.iloc[-100000:]
    assert d.history_len == 10  # README / data2json.py: --K 10
    assert d.min_history == 5  # ml-1m.ipynb: drop samples with history length less than 5
    assert d.forget_ratio == 0.2  # split_ml-1m.ipynb: for p in [0.2]
    assert d.shards == 4  # split_ml-1m.ipynb: shared in [0,1,2,3]
    assert d.seed == 42  # split_ml-1m.ipynb: random.seed(42)


def test_original_retrain_and_shard_recipe(paper) -> None:
    t = paper.train
    assert t.backbone == "t5:google-t5/t5-base"  # normal_train.py: --model_dir .../t5-base
    assert t.lr == 5e-4  # train_normal.sh / train_sisa.sh: --lr 0.0005 (evaluations read 0.0005)
    assert t.batch_size == 32  # normal_train.py: --batch_size default 32
    assert t.epochs == 100  # normal_train.py: --epochs default 100
    assert t.patience == 3  # normal_train.py: --endure_times default 3
    assert t.max_length == 512  # utils.py: tokenizer.encode(..., max_length=512)
    assert t.max_steps is None  # normal_train.py: no step cap, early stopping only
    assert t.weight_decay == 0.01  # normal_train.py: torch.optim.AdamW default decay
    assert (t.scheduler, t.warmup_ratio, t.max_grad_norm) == ("constant", 0.0, None)  # none
    assert (t.grad_accum, t.precision) == (1, "fp32")  # normal_train.py: one batch, fp32


def test_e2urec_values(paper) -> None:
    p = params(paper, "e2urec")
    assert p.teacher == "paper"  # utils.py: compute_forced_kl, z_orig - alpha*ReLU(z_aug - z_orig)
    assert p.stop == "budget"  # unlearning_e2urec.py: stops by step count, never by a check
    assert p.lr == 1e-3  # train_e2urec.sh: unlearning_e2urec.py --lr 0.001
    assert p.batch_size == 16  # train_e2urec.sh: --batch_size 16
    assert p.weight == 0.6  # train_e2urec.sh: --weight 0.6
    assert p.alpha == 2.0  # train_e2urec.sh: --alpha 2
    assert p.forget_epochs == 1  # unlearning_e2urec.py: --forget_epoch default 1
    assert (p.lora_r, p.lora_alpha) == (16, 32)  # unlearning_e2urec.py: LoraConfig(r=16, ...=32)
    assert p.lora_dropout == 0.05  # unlearning_e2urec.py: LoraConfig(lora_dropout=0.05)
    assert p.aug == "full"  # finetune_aug.py: AdamW over every parameter of the original
    assert p.aug_lr == 5e-5  # train_e2urec.sh: finetune_aug.py --lr 5e-5
    assert p.weight_decay == 0.01  # unlearning_e2urec.py: torch.optim.AdamW default decay
    assert p.max_steps is None  # passes, not a hand-picked step, end the run


@pytest.mark.parametrize("method", ["neggrad", "bad-t"])
def test_baseline_values(paper, method: str) -> None:
    p = params(paper, method)
    assert p.lr == 5e-5  # train_ga.sh / train_rl.sh: --lr 5e-5
    assert p.batch_size == 16  # train_ga.sh / train_rl.sh: --batch_size 16
    assert p.forget_weight == 0.2  # train_ga.sh / train_rl.sh: --weight 0.2
    assert p.weight_decay == 0.01  # unlearning_ga.py / unlearning_rl.py: AdamW default decay
    assert p.max_steps is None  # passes, not a hand-picked step, end the run


@pytest.mark.parametrize(
    ("method", "field", "official_step"),
    [
        ("neggrad", "epochs", 3000),  # train_ga.sh evaluates model_3000.pt
        ("bad-t", "epochs", 2400),  # train_rl.sh evaluates model_2400.pt
        ("e2urec", "aug_epochs", 1200),  # train_e2urec.sh uses forget_models/.../model_1200.pt
    ],
)
def test_passes_are_the_nearest_to_the_official_checkpoint(
    paper, method: str, field: str, official_step: int
) -> None:
    p = params(paper, method)
    assert getattr(p, field) == nearest_passes(official_step, p.batch_size)


def test_e2urec_passes_near_its_official_checkpoint(paper) -> None:
    # train_e2urec.sh evaluates model_1000.pt: one forget-only pass (812 steps) plus 188
    # combined steps. The fewest whole passes that reach the combined phase is forget_epochs + 1.
    p = params(paper, "e2urec")
    per_pass = steps_per_epoch(FORGET_ROWS, p.batch_size, 1)
    assert per_pass == 812
    assert p.epochs == p.forget_epochs + 1
    assert p.forget_epochs * per_pass < 1000 <= p.epochs * per_pass
    assert planned_steps(FORGET_ROWS, p.batch_size, p.epochs, None, 1) == 1624


def test_step_counts_written_in_the_ml1m_preset() -> None:
    # The comments of paper-ml1m-t5base.yaml state these step counts; keep them true.
    config = presets.resolve("paper-ml1m-t5base")

    def steps(method: str, passes: int) -> int:
        return planned_steps(FORGET_ROWS, params(config, method).batch_size, passes, None, 1)

    assert steps("neggrad", params(config, "neggrad").epochs) == 3248  # train_ga.sh: 3000
    assert steps("bad-t", params(config, "bad-t").epochs) == 2436  # train_rl.sh: 2400
    assert steps("e2urec", params(config, "e2urec").aug_epochs) == 812  # train_e2urec.sh: 1200
    assert RETAIN_ROWS + FORGET_ROWS == 60_000  # split_ml-1m.ipynb: 60% of 100,000 samples


def test_every_method_param_is_accepted(paper) -> None:
    for method, values in paper.method_params.items():
        build(METHODS.get(method).params, values, f"method {method!r}")
    assert set(paper.method_params) <= set(METHODS.names())
