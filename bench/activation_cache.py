"""A thaw phase on cached boundary activations against the same phase live, in one run.

    .venv/bin/python bench/activation_cache.py [--per-class 500] [--groups 2] [--epochs 3]
                                               [--size 64]
    .venv/bin/python bench/activation_cache.py --text [--groups 2] [--epochs 3]

Fashion-MNIST (``--per-class`` images of each class from the train file, 10 % carved off as
val, and as many from the test file), the packaged Lite0 and the default params otherwise:
prepare -> extract -> train_head once, then the same fine-tune phase (the top ``--groups`` of
the 8 layer groups unfrozen, ``--epochs`` epochs at ``--size`` px, batch 64, flip + shift
augmentation) from the same probe and seed, three times: ``activation_cache: never`` (the live
phase), ``always`` (the frozen part's output computed once per view, 4 views) and ``auto``.
Prints each one's training img/s (the mean over the phase's epochs), the cached / live ratio
(target >= 3x), the stage's wall time (the cache's build included), the validation and test
accuracy and their difference (target within 0.3 points), and what ``auto`` decided and why.

``--seeds N`` repeats the fine-tunes with N seeds (the params' seed and the next ones; the
probe stays the same) and prints the test difference per seed with its mean and standard
deviation: one seed's difference is mostly the seed's own noise.

A mode with ``+fixed-dw`` (e.g. ``--modes never always always+fixed-dw``) runs the same with
``finetune.train_depthwise: false``: the thawed groups' depthwise kernels stay as they are;
with ``+compile`` (e.g. ``always+fixed-dw+compile``) with ``finetune.compile: true``, its
compile counted in the first epoch's img/s. Their ratios are printed against the live phase
as it is today (``never``).

``--text``: the same on BBC News and the packaged MiniLM (examples/text/params.yaml, all 2,225
articles at 256 tokens): the top ``--groups`` of its 7 layer groups (embeddings, 6 encoder
layers) unfrozen, the boundary state being each document's hidden states and mask.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from finetune_lr_auto import test_accuracy  # bench/ is the script's folder: on sys.path

from thawline.config import config_from_dict, load_config
from thawline.files import read_json
from thawline.precision_choice import cpu_model
from thawline.stages import extract, finetune, prepare, train_head


def project(base: Path, per_class: int, groups: int, epochs: int, size: int):
    raw = load_config("params.yaml").model_dump(mode="json")
    names = ("prepared", "features", "head", "finetune", "checkpoints", "stats")
    raw["paths"] |= {name: str(base / name) for name in names}
    raw["prepare"] |= {"limit_per_class": per_class}
    raw["finetune"] |= {"strategy": "custom", "resume": False, "image_size": size,
                        "phases": [{"groups": groups, "epochs": epochs, "lr": 0.001}]}  # fmt: skip
    raw["tracking"] |= {"enabled": False}
    return config_from_dict(raw)


def text_project(base: Path, groups: int, epochs: int):
    raw = load_config("examples/text/params.yaml").model_dump(mode="json")
    raw["paths"] = {name: str(base / name) for name in raw["paths"]}
    raw["finetune"] |= {"strategy": "custom", "resume": False,
                        "phases": [{"groups": groups, "epochs": epochs, "lr": 5e-5}]}  # fmt: skip
    raw["scratch"] |= {"enabled": False}
    raw["tracking"] |= {"enabled": False}
    return config_from_dict(raw)


def speeds_into(speeds: list[float]):
    """An epoch callback that keeps each trained epoch's images/s."""
    return lambda epoch, metrics: epoch and speeds.append(metrics["images_per_second"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--per-class", type=int, default=500)
    parser.add_argument("--groups", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--size", type=int, default=64, help="finetune.image_size")
    parser.add_argument("--modes", nargs="+", default=["never", "always", "auto"])
    parser.add_argument("--text", action="store_true", help="BBC News on MiniLM instead")
    parser.add_argument("--seeds", type=int, default=1, help="fine-tunes per mode, seeds apart")
    args = parser.parse_args()
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        if args.text:
            cfg = text_project(Path(tmp), args.groups, args.epochs)
        else:
            cfg = project(Path(tmp), args.per_class, args.groups, args.epochs, args.size)
        for stage in (prepare, extract, train_head):
            stage.run(cfg, progress=False)
        runs = [(mode, cfg.seed + i) for i in range(args.seeds) for mode in args.modes]
        for mode, seed in runs:
            cache, *levers = mode.split("+")
            run = cfg.model_copy(update={"seed": seed, "finetune": cfg.finetune.model_copy(
                update={"activation_cache": cache, "train_depthwise": "fixed-dw" not in levers,
                        "compile": "compile" in levers})})  # fmt: skip
            speeds: list[float] = []
            started = time.perf_counter()
            result = finetune.run(run, progress=False, on_epoch_end=speeds_into(speeds))
            seconds = time.perf_counter() - started
            record = read_json(cfg.paths.finetune / "record.json")
            speed = sum(speeds) / len(speeds)
            test = test_accuracy(cfg, result.outputs["model"])
            rows[mode, seed] = (speed, seconds, record["best"]["val_accuracy"], test,
                          record["activation_cache"])  # fmt: skip
            losses = ", ".join(f"{r['train_loss']:.3f}/{r['val_accuracy']:.3f}"
                               for r in record["history"][1:])  # fmt: skip
            print(f"{mode} (seed {seed}): train loss / val accuracy per epoch {losses}; best epoch "
                  f"{record['best_epoch']}; rollbacks {record['rollbacks'] or 'none'}")  # fmt: skip
    if args.text:
        what = f"BBC News at 256 tokens, top {args.groups} of 7 groups, {args.epochs} epochs"
    else:
        what = (f"{args.per_class * 9} training images, top {args.groups} of 8 groups, "
                f"{args.epochs} epochs at {args.size} px")  # fmt: skip
    print(f"{cpu_model()}; {what}")
    print(f"{'activation_cache':>16}  {'seed':>4}  {'item/s':>7}  {'stage s':>7}  {'val':>6}  "
          f"{'test':>6}")  # fmt: skip
    for (mode, seed), (speed, seconds, val, test, _) in rows.items():
        print(f"{mode:>16}  {seed:4d}  {speed:7.0f}  {seconds:7.1f}  {val:.4f}  {test:.4f}")
    seeds = sorted({seed for _, seed in rows})
    if {"never", "always"} <= set(args.modes):
        ratios = [rows["always", s][0] / rows["never", s][0] for s in seeds]
        points = [100 * (rows["always", s][3] - rows["never", s][3]) for s in seeds]
        print(f"cached / live img/s: {', '.join(f'{r:.2f}x' for r in ratios)} (target >= 3x); "
              f"test accuracy {', '.join(f'{d:+.2f}' for d in points)} points"
              + (f", mean {statistics.mean(points):+.2f} (sd {statistics.stdev(points):.2f})"
                 if len(points) > 1 else "") + " (target within 0.3)")  # fmt: skip
    for mode in [m for m in args.modes if "+" in m and "never" in args.modes]:
        ratios = [rows[mode, s][0] / rows["never", s][0] for s in seeds]
        points = [100 * (rows[mode, s][3] - rows["never", s][3]) for s in seeds]
        print(f"{mode} / never img/s: {', '.join(f'{r:.2f}x' for r in ratios)}; test accuracy "
              f"{', '.join(f'{d:+.2f}' for d in points)} points")  # fmt: skip
    if "auto" in args.modes:
        decision = rows["auto", seeds[0]][4][0]
        print("auto decided:", decision.get("cached"), "-", decision.get("why"))


if __name__ == "__main__":
    main()
