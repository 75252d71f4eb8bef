"""edge-popup's restored mask: held as the mask itself until the scores change.

The reference is the behaviour before the mask was held: the same loaded layers with the held
mask dropped, so that every forward pass, support and export re-select the top-k of the
restored 0/1 scores (``top_fraction_mask``)."""

from __future__ import annotations

import copy
import io

import numpy as np
import pytest
import torch

from hiddenite import SupermaskConfig, is_supermask, load, models, save
from hiddenite.masks import top_fraction_mask
from hiddenite.methods import method_config


def saved(tmp_path, scope: str = "layer", arch: str = "resnet20"):
    config = SupermaskConfig(density=0.3, seed=5, method=method_config("edge-popup", scope=scope))
    model = models.create(arch, config, width=0.5).eval()
    path = tmp_path / f"{arch}-{scope}.hnn"
    save(model, path)
    return model, path


def hidden(model):
    return [m for m in model.modules() if is_supermask(m)]


def reference(model):
    """The loaded model as it behaved before: no held mask, selection every call."""
    model = copy.deepcopy(model)
    for layer in hidden(model):
        layer.restored_mask = None
    return model


def x(batch: int = 4) -> torch.Tensor:
    return torch.randn(batch, 1, 28, 28, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_loaded_outputs_and_masks_equal_the_selection_of_the_restored_scores(tmp_path, scope):
    model, path = saved(tmp_path, scope)
    loaded = load(path)
    ref = reference(loaded)
    assert all(layer.method._held(layer) is not None for layer in hidden(loaded))
    assert all(layer.method._held(layer) is None for layer in hidden(ref))
    with torch.no_grad():
        out, want, original = loaded(x()), ref(x()), model(x())
    assert torch.equal(out, want) and torch.equal(out, original)
    for a, b, c in zip(hidden(loaded), hidden(ref), hidden(model), strict=True):
        assert torch.equal(a.support(), b.support())
        assert torch.equal(a.support(), c.support())
        assert torch.equal(a.method.weight_factor(a), b.method.weight_factor(b))
        np.testing.assert_array_equal(a.method.export(a)["mask"], b.method.export(b)["mask"])
        if scope == "layer":  # the independent top-k of the 0/1 scores
            assert torch.equal(a.support(), top_fraction_mask(a.scores, a.density))


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_training_after_load_is_what_it_was_before(tmp_path, scope):
    _, path = saved(tmp_path, scope)
    runs = []
    for model in (load(path), reference(load(path))):
        torch.manual_seed(0)
        model.train()
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        outs = []
        for _ in range(3):
            data = x(8)
            target = torch.arange(8) % 10
            loss = torch.nn.functional.cross_entropy(model(data), target)
            opt.zero_grad()
            loss.backward()
            opt.step()
            outs.append(loss.detach())
        held = [layer.method._held(layer) for layer in hidden(model)]
        assert all(h is None for h in held)  # trained: the scores select again
        model.eval()
        with torch.no_grad():
            outs.append(model(x()))
        runs.append((outs, [layer.scores.detach().clone() for layer in hidden(model)]))
    (outs_a, scores_a), (outs_b, scores_b) = runs
    assert all(torch.equal(a, b) for a, b in zip(outs_a, outs_b, strict=True))
    assert all(torch.equal(a, b) for a, b in zip(scores_a, scores_b, strict=True))
    assert not torch.equal(scores_a[0], (scores_a[0] != 0).float())  # really trained


def test_a_score_written_in_place_drops_the_held_mask(tmp_path):
    _, path = saved(tmp_path)
    loaded = load(path)
    layer = hidden(loaded)[1]
    with torch.no_grad():
        flat = layer.scores.view(-1)
        i = int(torch.nonzero(~layer.support().view(-1))[0])
        flat[i] = 5.0  # now in the top-k: the selection must see it
    assert layer.method._held(layer) is None and layer.restored_mask is None
    assert bool(layer.support().view(-1)[i])
    assert torch.equal(layer.support(), top_fraction_mask(layer.scores, layer.density))


def test_a_moved_or_copied_model_selects_again_with_the_same_result(tmp_path):
    _, path = saved(tmp_path)
    loaded = load(path)
    with torch.no_grad():
        want = loaded(x())
    moved = copy.deepcopy(loaded).double().float()
    assert all(layer.method._held(layer) is None for layer in hidden(moved))
    with torch.no_grad():
        assert torch.equal(moved(x()), want)


def test_the_load_check_catches_scores_that_are_not_the_mask(tmp_path):
    _, path = saved(tmp_path)
    loaded = load(path)
    layer = hidden(loaded)[2]
    arrays = {"mask": layer.support().reshape(-1).numpy().copy()}
    assert layer.method.restored_matches(layer, arrays)
    layer.scores.detach().numpy().reshape(-1)[3] = 0.5  # no version bump: still held
    assert layer.method._held(layer) is not None
    assert not layer.method.restored_matches(layer, arrays)
    layer.scores.detach().numpy().reshape(-1)[3] = float(arrays["mask"][3])
    other = arrays["mask"].copy()
    other[[0, int(np.flatnonzero(other)[0])]] ^= True
    assert not layer.method.restored_matches(layer, {"mask": other})


def test_a_held_mask_with_the_wrong_kept_count_is_not_saved(tmp_path):
    """The reader's side (a file whose mask keeps the wrong count) is
    tests/test_fileformat.py::test_kept_count_that_top_k_cannot_reselect."""
    _, path = saved(tmp_path)
    loaded = load(path)
    layer = hidden(loaded)[1]  # the held mask keeps one weight too many
    held = layer.method._held(layer)
    held.view(-1)[int(torch.nonzero(~held.view(-1))[0])] = True
    with pytest.raises(ValueError, match="keeps"):
        save(loaded, tmp_path / "bad.hnn")


def test_a_loaded_model_pickles_and_the_copy_selects_again(tmp_path):
    _, path = saved(tmp_path)
    loaded = load(path)
    with torch.no_grad():
        want = loaded(x())
    buffer = io.BytesIO()
    torch.save(loaded, buffer)  # the whole module, as some users save it
    buffer.seek(0)
    again = torch.load(buffer, weights_only=False)  # our own bytes, written just above
    assert all(layer.method._held(layer) is None for layer in hidden(again))
    with torch.no_grad():
        assert torch.equal(again(x()), want)
