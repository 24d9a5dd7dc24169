"""The packaged MiniLM through the transformers adapter: it loads offline, embeds meaningfully,
and exposes its layers as ordered groups that the unfreezing code thaws and decays."""

from __future__ import annotations

import pytest
import torch

from thawline.config import BackboneParams, FinetuneParams
from thawline.errors import WeightsError
from thawline.models.backbone import create_backbone
from thawline.models.text_input import TextPreprocess, stack_tokens, tokenize
from thawline.training.phases import Phase, group_lrs

MINILM = "hf:sentence-transformers/all-MiniLM-L6-v2"


@pytest.fixture(scope="module")
def minilm():
    return create_backbone(BackboneParams(name=MINILM, weights="packaged"))


def _embed(backbone, texts: list[str], pooling: str = "mean") -> torch.Tensor:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(backbone.folder)
    ids, mask, _ = tokenize(tokenizer, texts, 64, "head")
    backbone.pooling = pooling
    with torch.inference_mode():
        return backbone.forward_features(stack_tokens(ids, mask))


def test_paraphrases_embed_closer_than_unrelated_sentences(minilm):
    a, b, c = _embed(minilm, [
        "The central bank raised interest rates to fight inflation.",
        "To curb rising prices, the central bank increased borrowing costs.",
        "The striker scored twice as the home side won the cup final.",
    ])  # fmt: skip
    cos = torch.nn.functional.cosine_similarity
    assert cos(a, b, dim=0) > cos(a, c, dim=0) + 0.3
    assert minilm.num_features == 384 and minilm.data_config["max_length"] == 512


def test_padding_never_changes_a_document_embedding(minilm):
    """Mean pooling counts only real tokens: a document alone and padded in a batch embed alike."""
    alone = _embed(minilm, ["A short note."])
    batched = _embed(minilm, ["A short note.", "A much longer sentence " * 6])
    assert torch.allclose(alone[0], batched[0], atol=1e-4)


def test_layer_groups_bottom_to_top_and_lrs_per_phase(minilm):
    groups = minilm.layer_groups()
    assert len(groups) == 7  # embeddings, then the 6 encoder layers
    assert all(n.startswith("embeddings.") for n in groups[0])
    for i, group in enumerate(groups[1:]):
        assert group and all(n.startswith(f"encoder.layer.{i}.") for n in group)
    assert not any("pooler" in n for g in groups for n in g)  # unused by pooling: not loaded
    assert minilm.feature_layers() == [f"encoder.layer.{i}" for i in range(6)]
    opts = FinetuneParams(base_lr=1e-4, lr_decay=0.5)
    lrs = group_lrs(opts, Phase(groups=2, epochs=1, lr=1e-4), 7)
    assert lrs[:5] == [0.0] * 5  # embeddings and layers 0-3 stay frozen
    assert lrs[5:] == pytest.approx([1e-4 * 0.25, 1e-4 * 0.5, 1e-4])  # layer 4, 5, head


def test_multi_layer_pooling_concatenates_chosen_layers(minilm):
    from thawline.models.preprocess import PooledFeatures

    net = PooledFeatures(minilm, ["encoder.layer.2", "encoder.layer.5"])
    x = torch.ones(2, 2, 8, dtype=torch.int32)
    with torch.inference_mode():
        out = net(x)
    assert out.shape == (2, 384 * 3) and net.widths(x) == [384, 384, 384]
    assert torch.allclose(out[:, 384 * 2 :], out[:, :384], atol=1e-5)  # layer 5 is the last


def test_head_and_tail_truncation_keeps_the_ending(minilm):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(minilm.folder)
    text = "start " + "middle " * 100 + "finale"
    ids, mask, truncated = tokenize(tokenizer, [text, "short"], 16, "head+tail")
    words = tokenizer.decode(ids[0][mask[0].bool()].tolist(), skip_special_tokens=True)
    assert words.startswith("start") and words.endswith("finale")
    assert truncated.tolist() == [True, False] and ids.dtype == torch.int16
    head = TextPreprocess(max_length=16, truncation="head", pad_id=0)
    assert head.resize(stack_tokens(ids, mask)[1:]).shape == (1, 2, int(mask[1].sum()))


def test_an_uncached_hub_name_fails_fast_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsError, match="not in the local cache.*backbone.weights: packaged"):
        create_backbone(BackboneParams(name="hf:nobody/no-such-model", weights="imagenet"))


def test_attention_dropout_reaches_the_attention_and_nothing_else(minilm):
    """finetune.attention_dropout sets the dropout BERT passes to scaled_dot_product_attention:
    in training mode, with the other dropouts off too, two passes agree only at 0."""
    import copy

    from thawline.training.unfreeze import set_attention_dropout

    model = copy.deepcopy(minilm.model).train()
    assert set_attention_dropout(model, 0.0) == 6  # one per encoder layer
    drops = {n: m.p for n, m in model.named_modules() if isinstance(m, torch.nn.Dropout)}
    assert {n for n, p in drops.items() if p == 0.0} == {
        f"encoder.layer.{i}.attention.self.dropout" for i in range(6)
    }
    assert all(p == 0.1 for n, p in drops.items() if "attention.self" not in n)  # the model's own

    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    ids = torch.randint(1000, 5000, (2, 24))

    def twice():
        with torch.no_grad():
            return [model(input_ids=ids).last_hidden_state for _ in range(2)]

    assert torch.equal(*twice())
    set_attention_dropout(model, 0.5)
    assert not torch.equal(*twice())
