"""What ``make run`` ends with: the models' accuracies, the champion and where to look next."""

from __future__ import annotations

from tests.conftest import small_config
from thawline.evaluation.artifacts import write_metrics, write_registration
from thawline.run_summary import summary_lines


def test_summary_names_every_model_the_champion_and_next_steps(tmp_path):
    cfg = small_config(tmp_path)
    assert "run 'dvc repro'" in summary_lines(cfg)[0]
    write_metrics(cfg.paths.evaluation, {
        "accuracy": 0.9187, "head_only_accuracy": 0.8856, "finetuned_accuracy": 0.9187,
        "finetuned_tta_accuracy": 0.9203, "tta_accuracy": 0.9203,
        "examples": 7000.0, "accuracy_ci_low": 0.9121, "accuracy_ci_high": 0.9249,
    })  # fmt: skip
    write_registration(cfg.paths.registration, {
        "registered": True, "model_uri": "models:/thawline/1", "version": 1,
        "aliases": {"champion": 1, "challenger": 1},
        "decision": {"promote": True, "reason": "no champion yet: the first model becomes it"},
    })  # fmt: skip
    text = "\n".join(summary_lines(cfg))
    assert "head_only  0.8856\n" in text and "finetuned  0.9187  (with TTA 0.9203)" in text
    assert "finetuned_tta" not in text and "  tta " not in text  # beside its model only
    assert "95% interval 0.9121-0.9249, 7000 images" in text
    assert "champion: version 1" in text and "first model becomes it" in text
    assert "mlflow ui --backend-store-uri sqlite:///" in text and "thawline report" in text
