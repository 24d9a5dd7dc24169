"""``precision: auto`` on a CPU (and on a GPU: marked gpu) is measured on the machine at hand
and cached per processor model (precision_choice.py), with a real tiny Lite0 classifier."""

from __future__ import annotations

import json

import pytest
import torch

from tests.finetune_support import same_weights, tiny_model
from thawline.devices import native_cpu_bf16, resolve_precision
from thawline.errors import ConfigError
from thawline.precision_choice import cache_file, choose_precision, cpu_model

CPU = torch.device("cpu")
needs_bf16 = pytest.mark.skipif(not native_cpu_bf16(), reason="this CPU has no native bf16")


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("THAWLINE_CACHE", str(tmp_path / "cache"))


@needs_bf16
def test_auto_measures_once_keeps_the_faster_and_leaves_model_and_rng_alone():
    model = tiny_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(3)
    expected_draw = torch.rand(3)
    torch.manual_seed(3)
    first = choose_precision("auto", CPU, model, batch=8, training=True)
    assert torch.equal(torch.rand(3), expected_draw)  # the caller's random stream is untouched
    reference = tiny_model()
    reference.load_state_dict(before)
    same_weights(model, reference)
    assert first.how == "measured" and set(first.images_per_s) == {"fp32", "bf16"}
    assert all(speed > 0 for speed in first.images_per_s.values())
    faster = max(first.images_per_s, key=first.images_per_s.get)
    assert first.precision.name == faster
    record = first.record()
    assert record["chosen_by"] == "measured" and record["cpu"] == cpu_model()

    second = choose_precision("auto", CPU, model, batch=8, training=True)
    assert second.how == "cached" and second.images_per_s == first.images_per_s
    # Another use or shape is another measurement.
    assert choose_precision("auto", CPU, model, batch=8, training=False).how == "measured"
    assert len(json.loads(cache_file().read_text())) == 2


@needs_bf16
def test_the_cached_figures_decide():
    model = tiny_model()
    choose_precision("auto", CPU, model, batch=4, training=False)
    entries = json.loads(cache_file().read_text())
    for slow, fast in (("fp32", "bf16"), ("bf16", "fp32")):
        cache_file().write_text(json.dumps({k: {slow: 1.0, fast: 9.0} for k in entries}))
        assert choose_precision("auto", CPU, model, batch=4, training=False).precision.name == fast


@pytest.mark.gpu
def test_auto_on_a_gpu_is_measured_too_and_leaves_the_gpu_random_stream_alone():
    gpu = torch.device("cuda")
    model = tiny_model()
    torch.cuda.manual_seed(3)
    expected_draw = torch.rand(3, device=gpu)
    torch.cuda.manual_seed(3)
    choice = choose_precision("auto", gpu, model, batch=8, training=True)
    assert torch.equal(torch.rand(3, device=gpu), expected_draw)
    assert next(model.parameters()).device.type == "cpu"  # measured on a copy
    half = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    assert choice.how == "measured" and set(choice.images_per_s) == {"fp32", half}
    assert choice.precision.name == max(choice.images_per_s, key=choice.images_per_s.get)
    assert choice.precision.scaler == (choice.precision.name == "fp16")  # fp16 trains scaled
    assert choice.record()["gpu"] == torch.cuda.get_device_name()
    assert choose_precision("auto", gpu, model, batch=8, training=True).how == "cached"


def test_asked_precisions_text_and_missing_bf16_follow_the_rule(monkeypatch):
    model = tiny_model()
    asked = choose_precision("fp32", CPU, model, batch=4, training=True)
    assert (asked.precision.name, asked.how, asked.images_per_s) == ("fp32", "asked", {})
    with pytest.raises(ConfigError, match="fp16 needs a CUDA device"):
        choose_precision("fp16", CPU, model, batch=4, training=True)
    for where in ("thawline.precision_choice", "thawline.devices"):  # a CPU without bf16
        monkeypatch.setattr(f"{where}.native_cpu_bf16", lambda: False)
    plain = choose_precision("auto", CPU, model, batch=4, training=True)
    assert (plain.precision.name, plain.how) == ("fp32", "rule")
    assert not cache_file().exists()


def test_the_rule_without_a_measurement():
    assert resolve_precision("auto", CPU).name == ("bf16" if native_cpu_bf16() else "fp32")
    assert resolve_precision("bf16", CPU).name == "bf16"  # an explicit choice is kept
    with pytest.raises(ValueError, match="fp16 needs a CUDA device"):
        resolve_precision("fp16", CPU)


def test_an_unwritable_cache_only_means_measuring_again(tmp_path, monkeypatch):
    blocked = tmp_path / "file"
    blocked.write_text("")
    monkeypatch.setenv("THAWLINE_CACHE", str(blocked / "cache"))  # below a file: cannot exist
    choice = choose_precision("auto", CPU, tiny_model(), batch=4, training=False)
    assert choice.how in {"measured", "rule"}
