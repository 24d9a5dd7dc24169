"""The store build's frozen part (training/frozen_forward.py): traced and frozen where it is
safe, the eager chain's output either way, eager where tracing does not apply."""

from __future__ import annotations

import contextlib
from functools import partial

import torch

from tests.finetune_support import tiny_model
from thawline.devices import Precision
from thawline.models.backbone import kept_modes
from thawline.training.activation_cache import Cut, bottom_forward, cut_for
from thawline.training.frozen_forward import frozen_forward


@contextlib.contextmanager
def _frozen_part():
    """A tiny Lite0's frozen part below its top 4 groups, in eval mode (as the store build runs
    it; the modes are restored afterwards), its eager chain, and 12 preprocessed images."""
    model = tiny_model()
    cut = cut_for(model, 4)
    assert isinstance(cut, Cut)
    images = torch.randint(0, 256, (12, 3, 28, 28), dtype=torch.uint8)
    with kept_modes(cut.bottom), torch.no_grad():
        for stage in cut.bottom:
            stage.eval()
        yield cut, partial(bottom_forward, cut), model.preprocess(images)


def test_traced_frozen_part_gives_the_eager_output_for_any_batch():
    with _frozen_part() as (cut, eager, x):
        forward = frozen_forward(cut.bottom, cut.enter, eager, x[:8], Precision(None))
        assert forward.__name__ == "fast"  # traced: Lite0's stages trace
        for batch in (x[:8], x[8:]):  # the traced batch size, then another
            torch.testing.assert_close(forward(batch), bottom_forward(cut, batch),
                                       rtol=1e-4, atol=1e-5)  # fmt: skip
    assert all(stage.training for stage in cut.bottom)  # the caller's modes are untouched


def test_autocast_and_non_image_inputs_run_eagerly():
    with _frozen_part() as (cut, eager, x):
        assert frozen_forward(cut.bottom, cut.enter, eager, x, Precision(torch.bfloat16)) is eager
        tokens = torch.zeros(2, 2, 16, dtype=torch.long)
        assert frozen_forward(cut.bottom, cut.enter, eager, tokens, Precision(None)) is eager
