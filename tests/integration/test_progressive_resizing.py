"""Progressive resizing: a phase may train at its own input size (finetune.phases[].image_size);
validation and the saved model stay at the model's size, and a cached phase's store is keyed by
the phase's size. Tiny Lite0 (random init) at 32 px."""

from __future__ import annotations

import pytest
from safetensors import safe_open

from tests.finetune_support import run
from thawline.config import config_from_dict
from thawline.errors import ConfigError

SMALL_THEN_FULL = [
    {"groups": 2, "epochs": 1, "lr": 3e-3, "image_size": 16},
    {"groups": -1, "epochs": 1, "lr": 1e-3},
]


def test_each_phase_trains_at_its_size_and_the_model_keeps_its_own(finetune_data, tmp_path):
    result = run(finetune_data, tmp_path, phases=SMALL_THEN_FULL, activation_cache="always")
    first, second = result.history[1], result.history[2]
    assert first["image_size"] == 16 and "image_size" not in second
    assert result.model.preprocess.size == 32  # validated and saved at the model's size
    assert "val_accuracy" in first
    # The cached phase stored 16 px activations: blocks.5's input is 1 x 1 there (2 x 2 at 32).
    store = next((tmp_path / ".activations").iterdir())
    with safe_open(store / "view-0.safetensors", "pt") as f:
        assert tuple(f.get_slice("h").get_shape()[2:]) == (1, 1)


def test_a_phase_size_below_16_px_is_refused():
    phases = [{"groups": -1, "epochs": 1, "lr": 1e-3, "image_size": 8}]
    with pytest.raises(ConfigError, match="image_size"):
        config_from_dict({"finetune": {"strategy": "custom", "phases": phases}})
