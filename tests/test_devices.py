"""Every method's batches follow the model's device: a mocked device move.

On a CPU-only machine a batch that was never moved still works, so a missed `.to(device)`
hides until a GPU run fails (or silently runs on the CPU). Here every `Tensor.to(<device>)` marks
its result, and every model forward (`Recommender.target_logits`, the one place batches reach a
model) refuses a batch whose tensors were never moved to a device.
"""

from __future__ import annotations

import weakref

import pytest
import torch
from test_methods import original_for, quick_sets, world  # noqa: F401  (fixture)

from e2urec.backbones.base import Recommender
from e2urec.methods import METHODS
from e2urec.unlearn import unlearn


def _names_device(args: tuple, kwargs: dict) -> bool:
    if "device" in kwargs:
        return True
    return any(isinstance(a, (torch.device, str, int)) and not isinstance(a, bool) for a in args)


@pytest.fixture
def mocked_device(monkeypatch):
    """Track device moves; forwards on unmoved batches raise. Yields the count of checks."""
    moved: dict[int, weakref.ref] = {}
    checked = []
    original_to = torch.Tensor.to
    original_logits = Recommender.target_logits

    def tracking_to(self, *args, **kwargs):
        out = original_to(self, *args, **kwargs)
        if _names_device(args, kwargs):
            moved[id(out)] = weakref.ref(out)
        return out

    def checked_logits(self, batch, model=None):
        for key in ("input_ids", "attention_mask", "labels"):
            tensor = batch[key]
            ref = moved.get(id(tensor))
            if ref is None or ref() is not tensor:
                raise AssertionError(f"batch {key!r} reached the model without a device move")
        checked.append(1)
        return original_logits(self, batch, model)

    monkeypatch.setattr(torch.Tensor, "to", tracking_to)
    monkeypatch.setattr(Recommender, "target_logits", checked_logits)
    yield checked


def test_the_mock_catches_an_unmoved_batch(mocked_device) -> None:
    from e2urec.backbones import create_recommender

    rows = [{"prompt": "The user liked Heat (5 stars).", "target": "Yes."}]
    rec = create_recommender("causal-tiny", [rows[0]["prompt"], "Yes.", "No."], seed=0)
    batch = rec.collate(rows)
    with pytest.raises(AssertionError, match="without a device move"):
        rec.target_logits(batch)
    rec.target_logits({k: v.to("cpu") for k, v in batch.items()})
    assert mocked_device == [1]


@pytest.mark.parametrize("method", METHODS.names())
def test_every_method_moves_its_batches_to_the_model_device(world, method, mocked_device):  # noqa: F811
    base = original_for(world, method)
    out = world["root"] / f"device-{method}"
    manifest = unlearn(method, base, world["data"], out, quick_sets(method), overwrite=True)
    assert manifest["complete"]
    assert mocked_device  # the method's forwards went through the check
