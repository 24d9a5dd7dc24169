"""Numerical faults (RELIABILITY.md 14, 15): NaN and absurd learning rates stop training within a
step, with a non-zero exit, a FAILED MLflow run and nothing saved; the same seed twice gives the
same features and the same metrics."""

from __future__ import annotations

import shutil

import pytest
import torch
import yaml
from mlflow import MlflowClient
from safetensors.torch import load_file, save_file

from tests.conftest import small_config
from tests.finetune_support import OPTS, series, tiny_model
from thawline.cli import main
from thawline.config import FinetuneParams, HeadParams, dump_config
from thawline.features.cache import load_features, read_cache_manifest
from thawline.models.storage import load_head
from thawline.stages import extract, train_head
from thawline.training.checkpoint import checkpoint_dirs
from thawline.training.fit_head import NonFiniteLossError, fit_head
from thawline.training.thaw_loop import fine_tune

FINETUNE = {"strategy": "full", "epochs_per_phase": 1, "batch_size": 32, "image_size": 32,
            "precision": "fp32", "device": "cpu"}  # fmt: skip


def config(tmp, prepared, **sections):
    paths = {name: str(tmp / name) for name in ("features", "head", "finetune", "checkpoints")}
    tracking = {"uri": f"sqlite:///{tmp / 'mlflow.db'}", "artifacts": str(tmp / "mlruns")}
    return small_config(tmp, paths={"prepared": str(prepared), **paths}, tracking=tracking,
                        head={"epochs": 5}, finetune=FINETUNE, **sections)  # fmt: skip


@pytest.fixture(scope="module")
def headed(prepared_small, tmp_path_factory):
    """extract -> train_head on the shared prepared store, tracked in a SQLite store."""
    cfg = config(tmp_path_factory.mktemp("numerical"), prepared_small.paths.prepared)
    extract.run(cfg, progress=False)
    return cfg, train_head.run(cfg, progress=False)


def test_nan_stops_within_a_step_and_saves_no_non_finite_checkpoint(finetune_data, tmp_path):
    def poison(epoch, _metrics):
        if epoch >= 1:  # after epoch 1's checkpoint (epoch 0 is the untrained start)
            model.head.net[-1].weight.data[0, 0] = float("nan")

    model = tiny_model()
    with pytest.raises(NonFiniteLossError, match="loss became nan at epoch 2, step 0"):
        fine_tune(model, *finetune_data, FinetuneParams(**OPTS), 7, checkpoint_dir=tmp_path,
                  on_epoch_end=poison)  # fmt: skip
    assert [p.name for p in checkpoint_dirs(series(tmp_path))] == ["epoch-0001"]
    saved = load_file(str(series(tmp_path) / "epoch-0001" / "model.safetensors"))
    assert all(v.isfinite().all() for v in saved.values() if v.is_floating_point())


def test_an_absurd_lr_stops_within_a_step_and_saves_nothing(finetune_data, tmp_path):
    """lr = 1e6 keeps the loss finite (about 3e9 after one step) while the weights run off to
    inf: the divergence check stops it at step 1, before any checkpoint."""
    opts = FinetuneParams(**OPTS)
    absurd = [phase.model_copy(update={"lr": 1e6}) for phase in opts.phases]
    opts = opts.model_copy(update={"phases": absurd})  # past the config's cap, as a bug might
    with pytest.raises(NonFiniteLossError, match=r"loss diverged to .* at epoch 1, step 1 "):
        fine_tune(tiny_model(), *finetune_data, opts, 7, checkpoint_dir=tmp_path)
    assert not list(tmp_path.rglob("*.safetensors"))


def test_an_absurd_head_lr_stops_within_a_step(headed):
    cfg, _ = headed
    train = load_features(cfg.paths.features, "train")
    opts = HeadParams().model_copy(update={"lr": 1e6, "epochs": 3})
    with pytest.raises(NonFiniteLossError, match=r"train_head: loss .* at step [0-3];"):
        fit_head((train[0].float(), train[1]), None, 10, opts, seed=0)


def test_lr_1e6_in_params_is_refused_before_anything_runs(headed, tmp_path, capsys):
    cfg, _ = headed
    paths = cfg.paths.model_copy(update={"finetune": tmp_path / "ft", "checkpoints": tmp_path})
    params = tmp_path / "params.yaml"
    raw = dump_config(cfg.model_copy(update={"paths": paths}))
    raw["finetune"]["base_lr"] = 1e6
    params.write_text(yaml.safe_dump(raw))
    assert main(["stage", "finetune", "-p", str(params), "-q"]) == 2
    err = capsys.readouterr().err
    assert (
        "finetune.base_lr: Input should be less than or equal to 10, or input should be "
        "'auto' (got 1000000.0)"
    ) in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]


def test_nan_in_the_cli_exits_1_marks_the_run_failed_and_saves_nothing(headed, tmp_path, capsys):
    """The whole path a user sees: a head with NaN weights makes the first loss NaN."""
    cfg, _ = headed
    head = tmp_path / "head"
    shutil.copytree(cfg.paths.head, head)
    weights = load_file(str(head / "head.safetensors"))
    weights = {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v
               for k, v in weights.items()}  # fmt: skip
    save_file(weights, str(head / "head.safetensors"))
    moved = {"head": head, "finetune": tmp_path / "finetune", "checkpoints": tmp_path / "ck"}
    tracking = cfg.tracking.model_copy(update={"uri": f"sqlite:///{tmp_path / 'nan.db'}"})
    cfg = cfg.model_copy(update={"paths": cfg.paths.model_copy(update=moved),
                                 "tracking": tracking})  # fmt: skip
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(dump_config(cfg)))
    assert main(["stage", "finetune", "-p", str(params), "-q"]) == 1
    err = capsys.readouterr().err
    assert "finetune failed: finetune: loss became nan at epoch 1, step 0" in err
    client = MlflowClient(tracking_uri=tracking.uri)
    runs = client.search_runs([client.get_experiment_by_name("thawline").experiment_id])
    assert [r.info.status for r in runs if r.info.run_name == "finetune"] == ["FAILED"]
    assert not (tmp_path / "finetune" / "model").exists()
    assert not list((tmp_path / "ck").rglob("*.safetensors"))  # no checkpoint of a NaN epoch


def test_same_seed_twice_gives_identical_features_and_metrics(headed, tmp_path):
    cfg, first = headed
    again = config(tmp_path, cfg.paths.prepared)
    extract.run(again, progress=False)
    shards = [
        {name: [shard["sha256"] for shard in split["shards"]]
         for name, split in read_cache_manifest(folder)["splits"].items()}
        for folder in (cfg.paths.features, again.paths.features)
    ]  # fmt: skip
    assert shards[0] == shards[1] and len(shards[0]["train"]) > 0
    second = train_head.run(again, progress=False)
    timeless = [{k: v for k, v in r.metrics.items() if "seconds" not in k} for r in (first, second)]
    assert timeless[0] == timeless[1] and "best_val_accuracy" in timeless[0]
    a, b = load_head(cfg.paths.head)[0], load_head(again.paths.head)[0]
    for (name, ta), tb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert ta.equal(tb), name
