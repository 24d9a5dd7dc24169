"""LoRA adapters (peft) on a text backbone's attention and feed-forward projections.

``finetune.thaw: lora`` trains low-rank adapters instead of the layers' weights: peft's
``inject_adapter_in_model`` wraps every ``nn.Linear`` of the encoder layers in place, so the
parameter names keep their layer prefix (``encoder.layer.5.attention.self.query.lora_A...``) and
the layer groups, the gradual unfreezing and the per-group LRs work as they do for weights. The
adapters' B matrices start at zero, so the model starts exactly as the probe. Before a model is
saved, evaluated, registered or served, :func:`merge_lora` folds the adapters into the weights:
the saved model is a plain encoder again.
"""

from __future__ import annotations

from torch import nn

# BERT-family names of the projections: attention (query, key, value, its output) and the
# feed-forward pair (intermediate, output); other families' names are matched too.
TARGETS = ("query", "key", "value", "dense", "q_lin", "k_lin", "v_lin", "out_lin", "lin1",
           "lin2", "Wqkv", "Wo", "Wi")  # fmt: skip


def inject_lora(model: nn.Module, layers: str, rank: int, alpha: int, dropout: float) -> int:
    """Adapters on every target projection under ``layers`` (e.g. ``encoder.layer``); returns
    how many modules got one."""
    from peft import LoraConfig, inject_adapter_in_model

    names = [name for name, module in model.named_modules()
             if isinstance(module, nn.Linear) and name.startswith(f"{layers}.")
             and name.rsplit(".", 1)[-1] in TARGETS]  # fmt: skip
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=names)
    inject_adapter_in_model(config, model)
    return len(names)


def has_lora(model: nn.Module) -> bool:
    return any("lora_" in name for name, _ in model.named_parameters())


def is_adapter(name: str) -> bool:
    """Whether a parameter name is a LoRA adapter's (what ``thaw: lora`` trains)."""
    return ".lora_" in name


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its base weight and put the plain layer back (in place)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    wrapped = [(name, m) for name, m in model.named_modules() if isinstance(m, BaseTunerLayer)]
    for name, module in wrapped:
        module.merge()
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, module.get_base_layer())
    return model
