"""The Markdown summary a flow run leaves as a Prefect artifact: stages, metrics, the champion
decision, and where to find the MLflow run."""

from __future__ import annotations

from pipelines.tasks import StageOutcome
from thawline.config import Config
from thawline.evaluation.artifacts import read_metrics, read_registration
from thawline.tracking import tracking_uri


def summary_markdown(
    cfg: Config, title: str, outcomes: list[StageOutcome], parent_run: str | None,
    notes: list[str] | None = None,
) -> str:  # fmt: skip
    """Markdown for ``prefect.artifacts.create_markdown_artifact``; paths are cfg's (repo cwd)."""
    lines = [f"# {title}", ""]
    lines += [f"- {note}" for note in notes or []]
    lines += ["", "| stage | ran | seconds |", "|---|---|---|"]
    lines += [f"| {o.stage} | {'yes' if o.ran else 'up to date'} | {o.seconds:.1f} |"
              for o in outcomes]  # fmt: skip
    metrics = read_metrics(cfg.paths.evaluation)
    if metrics:
        lines += ["", "## Test metrics", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v:.4f} |" for k, v in metrics.items() if isinstance(v, int | float)]
    registration = read_registration(cfg.paths.registration)
    if registration.get("registered"):
        decision = registration.get("decision", {})
        verdict = "promoted to champion" if decision.get("promote") else "champion kept"
        lines += ["", "## Champion gate", "",
                  f"`{registration['model_uri']}`: **{verdict}**: {decision.get('reason', '')}",
                  f"aliases: {registration.get('aliases')}"]  # fmt: skip
    if parent_run:
        uri = tracking_uri(cfg)
        lines += ["", "## MLflow", "",
                  f"run `{parent_run}` in `{uri}`: `mlflow ui --backend-store-uri {uri}`, then "
                  f"<http://127.0.0.1:5000/#/runs/{parent_run}>"]  # fmt: skip
    return "\n".join(lines) + "\n"
