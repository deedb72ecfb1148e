"""The influence method: its solvers against exact retraining on a convex model, the cached
curvature against the exact solver on a tiny T5, the curvature cache, and bad inputs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from small_world import prepare_small
from torch import nn

from e2urec import cli
from e2urec.errors import E2URecError
from e2urec.methods import influence
from e2urec.methods.curvature import (
    EKFAC,
    build_ekfac,
    conjugate_gradient,
    cosine,
    gradient_sum,
    hessian_operator,
)
from e2urec.train.recipes import train
from e2urec.unlearn import unlearn


# ---------------------------------------------------------------- convex: logistic regression
def logistic_problem(n: int = 800, d: int = 6, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=gen, dtype=torch.float64)
    w = torch.randn(d, generator=gen, dtype=torch.float64)
    y = (torch.rand(n, generator=gen, dtype=torch.float64) < torch.sigmoid(x @ w)).double()
    return x, y


def exact_fit(x: torch.Tensor, y: torch.Tensor, lam: float) -> torch.Tensor:
    """argmin mean log-loss(x θ, y) + λ/2 ‖θ‖² by Newton's method (θ = [w, b]), to 1e-12: how a
    model with weight decay λ is trained, and retrained on the retained rows."""
    xa = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], dim=1)
    theta = torch.zeros(xa.shape[1], dtype=x.dtype)
    for _ in range(50):
        p = torch.sigmoid(xa @ theta)
        grad = xa.T @ (p - y) / len(x) + lam * theta
        hess = xa.T @ (xa * (p * (1 - p)).unsqueeze(1)) / len(x)
        step = torch.linalg.solve(hess + lam * torch.eye(len(theta), dtype=x.dtype), grad)
        theta = theta - step
        if step.norm() < 1e-12:
            break
    return theta


def model_at(theta: torch.Tensor) -> nn.Linear:
    model = nn.Linear(len(theta) - 1, 1).double()
    with torch.no_grad():
        model.weight.copy_(theta[:-1].unsqueeze(0))
        model.bias.copy_(theta[-1:])
    return model


def influence_delta(x, y, forget, model, lam, mode, solver):
    """The method's update with damping λ = the weight decay: Δθ = (1/n)(H + λI)⁻¹ b, H on the
    retained rows, b = Σ_U [∇ℓ(z) − ḡ] (removal, ḡ = the retained rows' mean gradient) or
    Σ_U [∇ℓ(z) − ∇ℓ(z′)] (flip)."""
    n = len(x)
    params = dict(model.named_parameters())
    retain = [i for i in range(n) if i not in set(forget)]

    def loss(rows, labels=y):
        index = torch.as_tensor(list(rows))
        logits = model(x[index]).squeeze(1)
        return nn.functional.binary_cross_entropy_with_logits(
            logits, labels[index], reduction="none"
        )

    b = gradient_sum(params, loss, forget, 64)
    if mode == "flip":
        other = gradient_sum(params, lambda rows: loss(rows, 1 - y), forget, 64)
        b = {k: b[k] - other[k] for k in b}
    else:
        mean = gradient_sum(params, loss, retain, 64)
        b = {k: b[k] - len(forget) * mean[k] / len(retain) for k in b}
    if solver == "cg":
        apply_h = hessian_operator(params, loss, retain, 128)
        x_sol, info = conjugate_gradient(apply_h, b, lam, max_iter=100, tol=1e-10)
        assert info["converged"]
    else:
        generator = torch.Generator().manual_seed(0)

        def sampled(rows):
            index = torch.as_tensor(list(rows))
            logits = model(x[index]).squeeze(1)
            drawn = torch.bernoulli(torch.sigmoid(logits.detach()), generator=generator)
            return nn.functional.binary_cross_entropy_with_logits(logits, drawn, reduction="none")

        curvature = build_ekfac(model, params, sampled, retain)
        x_sol = curvature.solve(b, lam)
    return {k: v / n for k, v in x_sol.items()}


@pytest.mark.parametrize("mode", ["remove", "flip"])
def test_cg_gives_leave_set_out_parameters_of_logistic_regression(mode):
    x, y = logistic_problem()
    lam = 0.0025
    theta = exact_fit(x, y, lam)
    forget = list(range(0, 800, 40))  # 20 rows
    if mode == "remove":
        keep = [i for i in range(len(x)) if i not in set(forget)]
        target = exact_fit(x[keep], y[keep], lam)
    else:
        flipped = y.clone()
        flipped[forget] = 1 - flipped[forget]
        target = exact_fit(x, flipped, lam)
    delta = influence_delta(x, y, forget, model_at(theta), lam, mode, "cg")
    got = theta + torch.cat([delta["weight"].reshape(-1), delta["bias"]])
    true_delta, our_delta = target - theta, got - theta
    relative = float((got - target).norm() / target.norm())
    relative_delta = float((our_delta - true_delta).norm() / true_delta.norm())
    cos = float(our_delta @ true_delta / (our_delta.norm() * true_delta.norm()))
    print(
        f"{mode}: |θ - θ_retrain|/|θ_retrain| = {relative:.4f}, "
        f"|Δθ - Δθ_true|/|Δθ_true| = {relative_delta:.4f}, cosine(Δθ) = {cos:.5f}"
    )
    assert relative < 0.05 and cos >= 0.99, (relative, cos)
    assert relative_delta < 0.1, relative_delta  # the update itself, not only the parameters


def test_ekfac_on_one_linear_layer_points_the_same_way_as_cg():
    x, y = logistic_problem()
    lam = 0.0025
    theta = exact_fit(x, y, lam)
    forget = list(range(0, 800, 40))
    cg = influence_delta(x, y, forget, model_at(theta), lam, "remove", "cg")
    ek = influence_delta(x, y, forget, model_at(theta), lam, "remove", "ekfac")
    print(f"logistic regression: cosine(EK-FAC, CG) = {cosine(cg, ek):.4f}")
    assert cosine(cg, ek) > 0.9


def test_conjugate_gradient_reports_negative_curvature_and_no_convergence():
    b = {"v": torch.tensor([1.0, 1.0], dtype=torch.float64)}
    hessian = torch.tensor([[1.0, 0.0], [0.0, -3.0]], dtype=torch.float64)
    x, info = conjugate_gradient(lambda v: {"v": hessian @ v["v"]}, b, 0.1, 10, 1e-8)
    assert info["negative_curvature"] and not info["converged"]
    assert torch.isfinite(x["v"]).all()
    _, capped = conjugate_gradient(
        lambda v: {"v": v["v"] * torch.tensor([1.0, 50.0])}, b, 0.1, 1, 1e-12
    )
    assert capped["iterations"] == 1 and not capped["converged"]


# ---------------------------------------------------------------- the method on a tiny T5
@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("influence")
    prepare_small(root, shards=2)
    train(root / "data", "train", "t5-tiny", root / "original", epochs=2)
    return {"root": root, "data": root / "data", "original": root / "original"}


def delta_of(run: Path, original: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    before = load_file(str(original / "model" / "model.safetensors"))
    after = load_file(str(run / "model" / "model.safetensors"))
    return {k: (after[k] - before[k]).double() for k in before}


def test_ekfac_against_exact_cg_on_tiny_t5(world):
    """The cached curvature's Δθ against the exact solver's (a damping where CG converges)."""
    root = world["root"]
    sets = ["damping=1.0", "params=last:1"]
    cg = unlearn(
        "influence",
        world["original"],
        world["data"],
        root / "cg",
        [*sets, "solver=cg", "cg_tol=1e-4", "cg_iters=200"],
    )
    unlearn("influence", world["original"], world["data"], root / "ek", [*sets, "curvature=build"])
    assert cg["influence"]["solver"]["converged"]
    cos = cosine(delta_of(root / "cg", world["original"]), delta_of(root / "ek", world["original"]))
    print(f"tiny T5, last:1, damping 1: cosine(EK-FAC, CG) = {cos:.3f}")
    assert cos > 0.5


def test_curvature_is_stored_reused_and_refused_for_another_version(world, capsys):
    root = world["root"]
    first = unlearn("influence", world["original"], world["data"], root / "a", ["params=head"])
    info = first["influence"]["solver"]["curvature"]
    stored = Path(info["file"])
    assert stored.is_file() and info["source"] == "built"
    assert EKFAC.load(stored).info["weights_key"] == info["weights_key"]
    influence._MEMORY.clear()
    second = unlearn("influence", world["original"], world["data"], root / "b", ["params=head"])
    assert second["influence"]["solver"]["curvature"]["source"] == "file"
    assert second["influence"]["curvature_build_s"] == 0.0
    assert torch.equal(
        delta_of(root / "a", world["original"])["shared.weight"],
        delta_of(root / "b", world["original"])["shared.weight"],
    )
    # a curvature file of another version (the unlearned run) is refused before anything is written
    other = root / "other-version"
    train(world["data"], "train", "t5-tiny", other, epochs=1, max_steps=1, seed=5)
    out = root / "refused"
    code = cli.main(
        [
            "unlearn",
            "--method",
            "influence",
            "--from",
            str(other),
            "--data",
            str(world["data"]),
            "--out",
            str(out),
            "--set",
            f"curvature={stored}",
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and not out.exists()
    assert len(err) == 1 and err[0].startswith("e2urec: error:") and "another model" in err[0]


def test_no_nan_weights_are_written(world, monkeypatch):
    monkeypatch.setattr(
        EKFAC, "solve", lambda self, b, damping: {k: v * float("nan") for k, v in b.items()}
    )
    out = world["root"] / "nan"
    with pytest.raises(Exception, match="not finite"):
        unlearn("influence", world["original"], world["data"], out, ["params=head"])
    assert not (out / "model").exists()


def test_flip_moves_forget_answers_towards_the_other_answer(world):
    from e2urec.data.dataset import load_split
    from e2urec.runs import load_run_model

    rows = load_split(world["data"], "forget").to_dict("records")
    out = world["root"] / "flip"
    unlearn("influence", world["original"], world["data"], out, ["mode=flip", "damping=0.1"])

    def margin(run: Path) -> float:
        model = load_run_model(run)
        with torch.no_grad():
            logits = model.answer_logits(model.recommender.collate(rows))
        yes, no = model.recommender.yes_id, model.recommender.no_id
        sign = torch.tensor([1.0 if r["label"] == 1 else -1.0 for r in rows])
        return float(((logits[:, yes] - logits[:, no]) * sign).mean())

    assert margin(out) < margin(world["original"])


def test_search_scales_the_step_by_the_multiplier_with_the_lowest_valid_logloss(world):
    """search=valid: the written Δθ is the chosen multiplier times the plain step, and the chosen
    multiplier has the lowest validation log-loss of the candidates (ties to the larger)."""
    from e2urec.data.dataset import load_split
    from e2urec.eval.metrics import logloss
    from e2urec.eval.predict import score_rows
    from e2urec.runs import load_run_model

    root, sets = world["root"], ["params=last:1", "damping=0.1", "scale=4"]
    unlearn("influence", world["original"], world["data"], root / "plain", sets)
    searched = unlearn(
        "influence",
        world["original"],
        world["data"],
        root / "searched",
        [*sets, "search=valid", "search_steps=5", "search_rows=16"],
    )
    report = searched["influence"]["search"]
    losses = {float(m): v for m, v in report["valid_logloss"].items()}
    assert sorted(losses) == [0.25, 0.5, 1.0, 2.0, 4.0] and report["rows"] == 16
    best = min(losses.values())
    assert report["multiplier"] == max(m for m, v in losses.items() if v <= best + 0.001)
    assert report["at_edge"] == (report["multiplier"] in (0.25, 4.0))
    plain = delta_of(root / "plain", world["original"])
    step = delta_of(root / "searched", world["original"])
    for name, value in plain.items():
        assert torch.allclose(step[name], report["multiplier"] * value, atol=1e-6)
    rows = load_split(world["data"], "valid").to_dict("records")
    sample = __import__("random").Random(searched["seed"] + 2).sample(rows, 16)
    scores = score_rows(load_run_model(root / "searched"), sample, progress=False)
    again = logloss([r["label"] for r in sample], scores.p_yes)
    assert abs(again - losses[report["multiplier"]]) < 1e-4


def test_search_needs_validation_rows(world, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(world["data"], data)
    (data / "valid.jsonl").write_text("", encoding="utf-8")
    with pytest.raises(E2URecError, match="validation rows"):
        influence.InfluenceParams(search="valid").check_data(data)


def lora_original(world) -> Path:
    run = world["root"] / "lora-original"
    if not run.exists():
        train(world["data"], "train", "t5-tiny", run, epochs=1, max_steps=2, finetune="lora")
    return run


def test_auto_params_are_the_lora_targets_of_a_lora_original(world):
    manifest = unlearn("influence", lora_original(world), world["data"], world["root"] / "lo", [])
    assert manifest["influence"]["params"]["resolved"] == "lora"
    names = delta_of(world["root"] / "lo", lora_original(world))
    changed = {k for k, v in names.items() if v.abs().max() > 0}
    assert changed and all(k.split(".")[-2] in ("q", "v") for k in changed)


@pytest.mark.parametrize(
    "sets, needle",
    [
        (["params=lora"], "no LoRA adapters"),
        (["params=last:9"], "layers"),
        (["damping=0"], "damping must be positive"),
        (["damping=-1"], "damping must be positive"),
        (["mode=undo"], "mode must be one of"),
        (["search=test"], "search must be one of"),
        (["search_steps=0"], "search_steps must be"),
        (["params=last:x"], "last:K"),
        (["curvature=/nonexistent/c.safetensors"], "not found"),
    ],
)
def test_bad_settings_exit_2_with_one_line_and_write_nothing(world, capsys, sets, needle):
    out = world["root"] / "bad"
    argv = [
        "unlearn",
        "--method",
        "influence",
        "--from",
        str(world["original"]),
        "--data",
        str(world["data"]),
        "--out",
        str(out),
    ]
    for item in sets:
        argv += ["--set", item]
    code = cli.main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and not out.exists()
    assert len(err) == 1 and err[0].startswith("e2urec: error:") and needle in err[0], err


def test_ensemble_and_flip_without_yes_no_are_refused(world, capsys, tmp_path):
    from e2urec.methods.ensemble import Recipe, train_ensemble

    ensemble = world["root"] / "sisa"
    train_ensemble("sisa", world["data"], ensemble, Recipe(epochs=1, max_steps=1))
    out = tmp_path / "out"
    base = ["unlearn", "--method", "influence", "--data", str(world["data"]), "--out", str(out)]
    assert cli.main([*base, "--from", str(ensemble)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "single-model" in err[0] and not out.exists()
    data = tmp_path / "data"  # the same data with a forget answer that is neither Yes. nor No.
    shutil.copytree(world["data"], data)
    lines = (data / "forget.jsonl").read_text(encoding="utf-8").splitlines()
    first = json.loads(lines[0])
    lines[0] = json.dumps({**first, "target": "Maybe."})
    (data / "forget.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    params = influence.InfluenceParams(mode="flip")
    with pytest.raises(E2URecError, match="Yes./No."):
        params.check_data(data)
    influence.InfluenceParams(mode="remove").check_data(data)  # removal needs no answers


def test_influence_serves_forget_and_the_queue_with_the_curvature_kept_warm(world, tmp_path):
    import json as jsonlib

    from e2urec.deploy.deployment import Deployment
    from e2urec.deploy.worker import Worker

    dep_dir = tmp_path / "dep"
    assert cli.main(["deploy", "--from", str(world["original"]), "--data", str(world["data"]),
                     "--out", str(dep_dir)]) == 0  # fmt: skip
    dep = Deployment(dep_dir)
    with dep.store.connect() as conn:
        users = [u for (u,) in conn.execute(
            "SELECT DISTINCT user_id FROM samples WHERE split = 'train' ORDER BY user_id")][:3]  # fmt: skip
    sets = ["--set", "damping=0.1", "--set", "params=head"]
    assert cli.main(["forget", "--deployment", str(dep_dir), "--users", str(users[0]),
                     "--method", "influence", *sets]) == 0  # fmt: skip
    influence._MEMORY.clear()
    sources = []
    with Worker(dep) as worker:
        for user in users[1:]:
            dep.enqueue([user], method="influence", sets=["damping=0.1", "params=head",
                                                          "refresh=1"])  # fmt: skip
            (done,) = worker.drain()
            assert done["state"] == "done"
            manifest = jsonlib.loads((dep.version_dir(dep.current()) / "manifest.json").read_text())
            report = manifest["method_report"]["influence"]
            sources.append(report["solver"]["curvature"]["source"])
    # the worker's first pass reads (or builds) the curvature; the next one finds it in memory
    assert sources[0] in ("built", "file") and sources[1] == "memory"
    kinds = [entry["kind"] for entry in api_ledger(dep_dir)]
    assert kinds.count("deploy") == 1 and kinds.count("forget") == 3
    assert kinds.count("purge") == 3  # each superseded version, trained on the user, is purged


def api_ledger(dep_dir: Path) -> list:
    from e2urec import api

    return api.ledger(dep_dir)
