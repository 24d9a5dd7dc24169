"""examples/text/ is a DVC project of its own (``make run-text``): its dvc.yaml is the root's with
the code paths two folders up and no data-folder dependency (BBC News comes from a pinned
package). This test keeps the two in step; ``python -m tests.text.test_text_project`` rewrites it.
"""

from __future__ import annotations

from tests.conftest import REPO
from thawline.config import load_config

TEXT_PROJECT = REPO / "examples" / "text"
HEADER = (
    "# Generated from ../../dvc.yaml by `python -m tests.text.test_text_project` (a test keeps\n"
    "# them equal): the same stages, code two folders up, BBC News from its pinned package.\n"
)


def text_dvc_yaml() -> str:
    lines = []
    for line in (REPO / "dvc.yaml").read_text().splitlines():
        if line.strip() == "- ${data.root}":
            continue
        lines.append(line.replace("      - src/", "      - ../../src/"))
    return HEADER + "\n".join(lines) + "\n"


def test_the_text_project_runs_the_root_pipeline():
    # its own DVC root, or the root project's dvc status and dvc exp run collect its outputs
    assert (TEXT_PROJECT / ".dvc" / "config").is_file()
    assert (TEXT_PROJECT / "dvc.yaml").read_text() == text_dvc_yaml(), (
        "examples/text/dvc.yaml is out of date: python -m tests.text.test_text_project"
    )


def test_the_text_profile_is_valid_and_offline():
    cfg = load_config(TEXT_PROJECT / "params.yaml")
    assert cfg.data.source == "bbc-news" and cfg.backbone.weights == "packaged"
    assert cfg.backbone.name.startswith("hf:") and cfg.registry.model_name == "thawline-text"


if __name__ == "__main__":
    (TEXT_PROJECT / "dvc.yaml").write_text(text_dvc_yaml())
