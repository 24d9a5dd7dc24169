"""finetune.compile: each phase's network trained through torch.compile (inductor) gives the
eager run's losses and weights within float rounding, live and on cached activations, resumes
exactly, and a machine without a C++ compiler gets a clear error before anything trains.
Tiny Lite0 at 32 px."""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.utils import counters
from torch._inductor import config as inductor_config
from torch._inductor.cpp_builder import cpp_compiler_search

from tests.finetune_support import Stop, comparable, run, same_weights
from thawline.config import ConfigError

PHASES = {  # a cached phase (its top compiled), then a live full thaw (the classifier compiled)
    "phases": [{"groups": 2, "epochs": 1, "lr": 3e-3}, {"groups": -1, "epochs": 1, "lr": 1e-3}],
    "activation_cache": "always",
    "activation_views": 2,
    "train_depthwise": False,
    "rollback_tolerance": 1.0,  # no rollback: both phases' last weights are compared
}


def test_no_cxx_compiler_is_a_clear_error_before_training(finetune_data, tmp_path):
    cpp_compiler_search.cache_clear()  # inductor caches the compiler it found
    says = r"finetune.compile: true needs a C\+\+ compiler.*finetune.compile: false"
    with (
        inductor_config.patch({"cpp.cxx": (None, "no-such-c++")}),  # what $CXX would set
        pytest.raises(ConfigError, match=says),
    ):
        run(finetune_data, tmp_path / "runs", compile=True, **PHASES)
    cpp_compiler_search.cache_clear()
    assert not (tmp_path / "runs").exists()  # nothing started, nothing to clean up


@pytest.mark.slow  # compiling costs about a minute on a cold inductor cache
def test_compiled_phases_train_as_the_eager_ones(finetune_data, tmp_path):
    torch._dynamo.reset()
    counters.clear()
    eager = run(finetune_data, tmp_path / "eager", **PHASES)
    assert not counters["stats"]["unique_graphs"]
    compiled = run(finetune_data, tmp_path / "compiled", compile=True, **PHASES)
    assert counters["stats"]["unique_graphs"] >= 2  # the cached top and the whole classifier
    assert [p["cached"] for p in compiled.activation_cache] == [True, False]
    for a, b in zip(eager.history[1:], compiled.history[1:], strict=True):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-3)
        assert b["val_loss"] == pytest.approx(a["val_loss"], rel=1e-3)
    for key, value in eager.model.state_dict().items():
        if value.is_floating_point():
            torch.testing.assert_close(compiled.model.state_dict()[key], value,
                                       rtol=1e-3, atol=1e-4, msg=key)  # fmt: skip


@pytest.mark.slow
def test_a_compiled_run_resumes_exactly(finetune_data, tmp_path):
    whole = run(finetune_data, tmp_path / "whole", compile=True, **PHASES)
    with pytest.raises(Stop):  # dies after the cached phase's epoch
        run(finetune_data, tmp_path / "stopped", stop_after=1, compile=True, **PHASES)
    resumed = run(finetune_data, tmp_path / "stopped", compile=True, **PHASES)
    assert resumed.resumed_from == 1
    assert comparable(resumed.history) == comparable(whole.history)
    same_weights(whole.model, resumed.model)
