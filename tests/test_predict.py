"""The one batched forward pass (histo_core.predict): the same answer from arrays and tile sources, in any batch
size, with and without features, from a checkpoint dict or a ModelMeta."""

from __future__ import annotations

import numpy as np
import torch

from histo_core import pipeline
from histo_core.datasets import Split
from histo_core.model_meta import ModelMeta
from histo_core.models import build_model
from histo_core.predict import InputSpec, forward_features, iter_predictions, model_batch, predict_tiles

META = {
    "arch": "simplecnn",
    "classes": ["a", "b", "c"],
    "in_channels": 3,
    "input_size": 28,
    "mean": [0.5, 0.4, 0.3],
    "std": [0.2, 0.25, 0.3],
}
TILES = np.random.default_rng(0).integers(0, 256, (13, 28, 28, 3), dtype=np.uint8)


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("simplecnn", 3, 3, 28).eval()


def test_spec_from_a_checkpoint_dict_equals_the_one_from_model_meta():
    assert InputSpec.of(META) == InputSpec.of(ModelMeta.from_checkpoint(META))
    assert InputSpec.of(META).input_size == 28 and InputSpec.of(META).stain is None


def test_arrays_and_tile_sources_in_any_batch_size_give_the_same_probabilities():
    model, spec = _model(), InputSpec.of(META)
    whole = predict_tiles(model, TILES, spec, batch_size=64)
    source = pipeline.TileSource(Split("test", TILES, np.zeros(len(TILES), np.int64)), "cpu")
    assert [s for s, _, _ in iter_predictions(model, source, spec, batch_size=5)] == [0, 5, 10]
    np.testing.assert_allclose(predict_tiles(model, source, spec, batch_size=5), whole, atol=1e-6)
    assert whole.shape == (13, 3) and whole.dtype == np.float32
    np.testing.assert_allclose(whole.sum(1), 1.0, atol=1e-5)
    assert predict_tiles(model, TILES[:0], spec, num_classes=3).shape == (0, 3)


def test_features_come_from_the_same_pass_and_do_not_change_the_probabilities():
    model, spec = _model(), InputSpec.of(META)
    probs, feats = predict_tiles(model, TILES, spec, features=True, batch_size=4)
    np.testing.assert_allclose(probs, predict_tiles(model, TILES, spec), atol=1e-6)
    with torch.inference_mode():
        f, _ = forward_features(model, model_batch(TILES, spec, "cpu"))
    np.testing.assert_allclose(feats, f.numpy(), atol=1e-5)


def test_tiles_of_another_size_are_resized_to_the_models_input():
    model, spec = _model(), InputSpec.of(META)
    big = np.repeat(np.repeat(TILES, 2, axis=1), 2, axis=2)  # 56 px, the same picture
    assert model_batch(big, spec, "cpu").shape == (13, 3, 28, 28)
    assert predict_tiles(model, big, spec).shape == (13, 3)
