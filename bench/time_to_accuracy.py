"""Time to accuracy: thawline against the tutorials' loop and fastai's ``fine_tune``, in one run.

    .venv/bin/pip install -e '.[bench]'     # fastai 2.8, a bench-only extra
    .venv/bin/python bench/time_to_accuracy.py                       # full: ~90 min on 2 cores
    .venv/bin/python bench/time_to_accuracy.py --short               # ~20 min: a subset

Same packaged EfficientNet-Lite0 weights, same Fashion-MNIST images (the prepared store), the
same 64 px input, on the machine at hand. Each run's clock covers all its training work and
stops while the test split is scored after each epoch (scoring is not training):

1. ``naive``: the tutorials' loop: Lite0 + a linear head, every layer trainable, Adam 1e-4,
   fp32, batch 64, no augmentation; on CUDA where there is a GPU (``model.to(device)``).
2. ``fastai``: ``vision_learner`` on the same timm model with the packaged weights, fastai's
   default transforms at 64 px (``Resize(64)``, ``aug_transforms()``, the model's
   normalisation) and its default recipe: ``lr_find`` (valley) for ``base_lr``, then
   ``fine_tune(epochs, base_lr)`` (one frozen epoch, then one-cycle).
3. ``thawline``: extract (128 px, bf16) + train_head + the default fine-tune (``full``, one
   epoch of every image at 64 px), as ``make run`` trains.
4. ``thawline-fast``: the same start, then the ``fast`` profile exactly as ``make full`` runs it
   (the Makefile's ``FAST_PROFILE``: the top 3 groups for 1 epoch, all for 8, EMA on).
5. ``thawline-resize``: the same start, then ``--fast-epochs`` full-thaw epochs, the first half
   at 32 px (progressive resizing), the rest at 64 px.
6. ``thawline-ema``, ``thawline-mixup`` and ``thawline-batchstats``: the default with one lever
   on, timm's ``ModelEmaV3`` (``finetune.ema``), ``Mixup`` (``finetune.mixup_alpha: 0.2``) or
   BatchNorm on batch statistics (``finetune.freeze_bn: false``), so the ``fast`` profile is
   chosen from measurements. ``--thawline-epochs`` gives every thawline
   run that many epochs instead of the default's ``epochs_per_phase: auto``.
7. ``thawline-top4``: the same start, then one phase of ``--top4-epochs`` epochs with the top 4
   of Lite0's 8 groups thawed (blocks.3 up), EMA on, ``finetune.activation_cache`` from
   ``--top4-cache``.
8. ``thawline-custom``: the same start, then the fine-tune that ``--set`` gives, as ``make
   full`` would run it with ``FAST_PROFILE`` replaced by those ``-S`` items (for example
   ``--set finetune.strategy=custom 'finetune.phases=[{groups:4,epochs:4,lr:0.001},
   {groups:-1,epochs:2,lr:0.001}]' finetune.ema=true``): a candidate profile, measured alike.

Prints, per run, the wall time to reach 0.92, 0.93 and 0.94 test accuracy and the accuracy
reached within each budget (``--budgets`` minutes), writes them to ``--json`` and plots test
accuracy against wall time, all runs on one chart (``--plot``, default docs/time_to_accuracy.png).
A run with EMA (``thawline-fast``, ``thawline-ema``) also scores its averaged weights after each
epoch, from the checkpoint just written: a second curve, ``<run> (EMA)``. ``--tta`` scores
every thawline point also with ``evaluate.tta``'s ``flip`` (the softmax averaged over the image
and its mirror, as ``evaluate`` reports it beside the plain score): curves ``<run> (TTA)``.
``--short`` takes 1,000 training images per class, 500 test images per class, budgets of 2, 4
and 8 minutes and fewer epochs.
"""

from __future__ import annotations

import argparse
import copy
import json
import shlex
import tempfile
from pathlib import Path

import numpy as np
import torch
from tta_rivals import Clock, fastai_run, naive  # bench/ is the script's folder

from thawline.config import FinetuneParams, config_from_dict, load_config
from thawline.data.store import load_split
from thawline.precision_choice import cpu_model
from thawline.stages import extract, finetune, prepare, train_head
from thawline.training.checkpoint import load_latest
from thawline.training.strategy import resolve_strategy
from thawline.training.thaw_loop import fine_tune
from thawline.training.trained_model import load_training_data
from thawline.training.validate import logits_and_tta, predict_logits

THRESHOLDS = (0.92, 0.93, 0.94)
RUNS = (
    "naive",
    "fastai",
    "thawline",
    "thawline-fast",
    "thawline-resize",
    "thawline-top4",
    "thawline-custom",
)
# The top 4 of Lite0's 8 groups thawed (blocks.3 up: the lower half stays on ImageNet weights
# and BatchNorm statistics), EMA on: ``--top4-epochs`` epochs of one phase.
TOP4 = {"groups": 4, "lr": 0.001}
LEVERS = {  # on the default, one at a time
    "thawline-ema": {"ema": True},
    "thawline-mixup": {"mixup_alpha": 0.2},
    "thawline-batchstats": {"freeze_bn": False},
}


def project(base: Path, per_class: int | None, test_per_class: int | None):
    raw = load_config("params.yaml").model_dump(mode="json")
    names = ("prepared", "features", "head", "finetune", "checkpoints", "stats")
    raw["paths"] |= {name: str(base / name) for name in names}
    raw["prepare"] |= {"limit_per_class": per_class}
    raw["tracking"] |= {"enabled": False}
    cfg = config_from_dict(raw)
    prepare.run(cfg, progress=False)
    test = load_split(cfg.paths.prepared, "test")
    if test_per_class:  # the same images for every run
        keep = np.concatenate([np.flatnonzero(test.labels.numpy() == c)[:test_per_class]
                               for c in range(10)])  # fmt: skip
        return cfg, (test.images[keep], test.labels[keep])
    return cfg, (test.images, test.labels)


def fast_profile() -> dict:
    """The finetune keys ``make full``'s ``FAST_PROFILE`` changes (the Makefile holds it, for
    ``dvc exp run -S``), validated on params.yaml."""
    text = Path("Makefile").read_text().replace("\\\n", " ")
    line = next(x for x in text.splitlines() if x.startswith("FAST_PROFILE :="))
    return profile(shlex.split(line.split(":=", 1)[1])[1::2])  # -S key=value: the values


def profile(overrides: list[str]) -> dict:
    """The finetune keys that ``overrides`` (``finetune.key=value``, as ``-S`` takes them)
    change, validated on params.yaml."""
    fast = load_config("params.yaml", overrides).finetune.model_dump()
    default = load_config("params.yaml").finetune.model_dump()
    return {key: value for key, value in fast.items() if value != default[key]}


def thawline_run(cfg, test, phases: list[dict] | None, levers: dict, tta: bool = False) -> Clock:
    """extract + train_head + a fine-tune (the default, or ``phases``; ``levers`` set on it),
    as the stages run; with ``tta`` each point is also scored with flip TTA."""
    clock = Clock()
    extract.run(cfg, progress=False)
    train_head.run(cfg, progress=False)
    strategy = {"strategy": "custom", "phases": phases} if phases is not None else {
        "strategy": resolve_strategy(cfg).strategy}  # fmt: skip
    opts = FinetuneParams(**cfg.finetune.model_dump() | strategy | levers)  # validated
    start = finetune.starting_point(cfg, opts, progress=False)
    model = start.model

    def accuracy(scored=model) -> float | tuple[float, float]:
        if tta:
            logits, probs = logits_and_tta(scored, test[0], "flip")
        else:
            logits, probs = predict_logits(scored, test[0]), None
        scored.train()
        plain = (logits.argmax(1) == test[1]).float().mean().item()
        if probs is None:
            return plain
        return plain, (probs.argmax(1) == test[1]).float().mean().item()

    clock.score(accuracy)  # the probe at the fine-tune's size: where the thaw starts
    train, val = load_training_data(cfg)
    averaged = copy.deepcopy(model) if opts.ema else None  # the EMA weights, scored alike
    if averaged is not None:
        clock.ema_points.append(clock.points[0])  # the average starts at the probe
        clock.ema_tta_points += clock.tta_points[:1]

    def ema_accuracy() -> float | tuple[float, float]:
        # From the checkpoint just written, as a resume would load it: the run's one checkpoint
        # series (a cached phase's store sits beside it, hidden)
        (latest,) = [load_latest(d) for d in Path(tmp).iterdir() if not d.name.startswith(".")]
        averaged.load_state_dict(latest.state["ema"])
        return accuracy(averaged)

    def epoch_end(epoch: int, metrics: dict) -> None:
        if epoch:
            ema = metrics.get("ema_val_accuracy")
            print(f"  epoch {epoch}: val {metrics['val_accuracy']:.4f}"
                  + (f", EMA val {ema:.4f}" if ema is not None else ""))  # fmt: skip
            clock.score(accuracy)  # the raw weights
            if averaged is not None and ema is not None:
                clock.score(ema_accuracy, ema=True)

    with tempfile.TemporaryDirectory() as tmp:
        result = fine_tune(model, train, val, opts.model_copy(update={"resume": False}),
                           cfg.seed, checkpoint_dir=tmp, progress=False,
                           on_epoch_end=epoch_end)  # fmt: skip
    # What the stage keeps: the best epoch's weights (with EMA, raw or averaged: "weights").
    model = result.model
    kept = accuracy()
    clock.kept = {"epoch": result.best_epoch, "weights": result.best.get("weights", "raw"),
                  "test": kept[0] if tta else kept}  # fmt: skip
    if tta:
        clock.kept["test_tta"] = kept[1]
    print(
        f"  kept: epoch {result.best_epoch} ({clock.kept['weights']} weights), "
        f"test {clock.kept['test']:.4f}"
        + (f", with TTA {clock.kept['test_tta']:.4f}" if tta else "")
    )
    return clock


def summary(points: list[tuple[float, float]], budgets: list[float]) -> dict:
    reach = {f"{t:.2f}": next((s for s, a in points if a >= t), None) for t in THRESHOLDS}
    within = {f"{b:g} min": max((a for s, a in points if s <= 60 * b), default=None)
              for b in budgets}  # fmt: skip
    return {"seconds_to": reach, "accuracy_within": within, "points": points}


def plot(results: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, result in results.items():
        seconds, accuracy = zip(*result["points"], strict=True)
        ax.plot([s / 60 for s in seconds], accuracy, marker="o", label=name)
    for t in THRESHOLDS:
        ax.axhline(t, color="grey", lw=0.5, ls=":")
    ax.set(xlabel="training wall time (minutes)", ylabel="test accuracy")
    ax.set_title(title, fontsize=9)
    lowest = min(a for r in results.values() for _, a in r["points"])
    ax.set_ylim(min(0.8, lowest - 0.02), 0.96)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--short", action="store_true", help="a subset: about 20 minutes")
    parser.add_argument("--budgets", type=float, nargs="+", help="minutes (default 5 10 20)")
    parser.add_argument("--epochs", type=int, help="naive and fastai epochs (default 4; short 3)")
    parser.add_argument("--runs", nargs="+", default=list(RUNS),
                        choices=[*RUNS, *LEVERS])  # fmt: skip
    parser.add_argument("--fast-epochs", type=int, help="resize epochs (default 6; short 4)")
    parser.add_argument("--top4-epochs", type=int, default=4, help="thawline-top4's epochs")
    parser.add_argument("--top4-cache", default="auto", choices=["auto", "always", "never"],
                        help="thawline-top4's finetune.activation_cache")  # fmt: skip
    parser.add_argument(
        "--thawline-epochs",
        type=int,
        help="epochs of the default's full thaw (default: epochs_per_phase auto)",
    )
    parser.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                        help="thawline-custom's finetune overrides, as -S takes them")  # fmt: skip
    parser.add_argument("--tta", action="store_true",
                        help="score thawline's points also with flip TTA")  # fmt: skip
    parser.add_argument("--per-class", type=int, help="training images per class (a subset)")
    parser.add_argument("--test-per-class", type=int, help="test images per class (a subset)")
    parser.add_argument("--json", type=Path, default=Path("reports/time_to_accuracy.json"))
    parser.add_argument("--plot", type=Path, default=Path("docs/time_to_accuracy.png"))
    args = parser.parse_args()
    if ("thawline-custom" in args.runs) != bool(args.set):
        parser.error("--set and the thawline-custom run go together: give both or neither")
    if not_finetune := [item for item in args.set if not item.startswith("finetune.")]:
        parser.error(f"--set {not_finetune}: only finetune.* keys (the profile's fine-tune)")
    per_class, test_per_class = (1000, 500) if args.short else (None, None)
    per_class, test_per_class = args.per_class or per_class, args.test_per_class or test_per_class
    budgets = args.budgets or ([2, 4, 8] if args.short else [5, 10, 20])
    epochs = args.epochs or (3 if args.short else 4)
    fast_epochs = args.fast_epochs or (4 if args.short else 6)
    small = fast_epochs // 2
    fast = [{"groups": -1, "epochs": small, "lr": 0.001, "image_size": 32},
            {"groups": -1, "epochs": fast_epochs - small, "lr": 0.001}]  # fmt: skip
    results = {}
    for name in args.runs:
        print(f"{name}:", flush=True)
        with tempfile.TemporaryDirectory() as tmp:
            cfg, test = project(Path(tmp), per_class, test_per_class)
            if name == "naive":
                clock = naive(cfg, test, epochs)
            elif name == "fastai":
                clock = fastai_run(cfg, test, epochs)
            else:
                levers = fast_profile() if name == "thawline-fast" else LEVERS.get(name, {})
                if name == "thawline-custom":
                    levers = profile(args.set)
                if args.thawline_epochs and name != "thawline-fast":
                    levers = levers | {"epochs_per_phase": args.thawline_epochs}
                phases = fast if name == "thawline-resize" else None
                if name == "thawline-top4":
                    phases = [TOP4 | {"epochs": args.top4_epochs}]
                    levers = {"ema": True, "activation_cache": args.top4_cache}
                clock = thawline_run(cfg, test, phases, levers, args.tta)
        results[name] = summary(clock.points, budgets) | (
            {"kept": clock.kept} if clock.kept else {}
        )
        if clock.ema_points:
            results[f"{name} (EMA)"] = summary(clock.ema_points, budgets)
        if clock.tta_points:
            results[f"{name} (TTA)"] = summary(clock.tta_points, budgets)
        if clock.ema_tta_points:
            results[f"{name} (EMA, TTA)"] = summary(clock.ema_tta_points, budgets)
    threads = torch.get_num_threads()
    machine = f"{cpu_model()}, {threads} threads"
    if torch.cuda.is_available():  # the training device (naive and thawline alike)
        machine = f"{torch.cuda.get_device_name()} ({machine})"
    title = f"Fashion-MNIST, {len(test[1])} test images; {machine}"
    print(title)
    print(f"{'run':>20}  " + "  ".join(f"to {t:.2f}" for t in THRESHOLDS) + "  "
          + "  ".join(f"{b:>6g} min" for b in budgets))  # fmt: skip
    for name, result in results.items():
        reach = [result["seconds_to"][f"{t:.2f}"] for t in THRESHOLDS]
        within = [result["accuracy_within"][f"{b:g} min"] for b in budgets]
        cells = ["      -" if s is None else f"{s:6.0f}s" for s in reach]
        cells += ["         -" if a is None else f"{a:10.4f}" for a in within]
        print(f"{name:>20}  " + "  ".join(cells))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"title": title, "runs": results}, indent=1))
    plot(results, args.plot, title)
    print(f"wrote {args.json} and {args.plot}")


if __name__ == "__main__":
    main()
