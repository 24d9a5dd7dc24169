"""Prefect flows and deployments: the only place that imports prefect.

- :mod:`pipelines.training`: prepare -> extract -> train_head -> finetune -> scratch -> evaluate ->
  register, one Prefect task per stage (``python -m pipelines.training``, ``thawline flow run``).
- :mod:`pipelines.retrain`: the scheduled data-change flow, in tiers (``thawline flow retrain``).
- :mod:`pipelines.deploy`: both flows as deployments on cron schedules (``thawline flow serve``).

Every task runs its stage through DVC (``dvc repro --single-item <stage>``), which calls the same
``thawline stage <name>`` as ``dvc repro``: one copy of each stage's logic, and DVC alone decides
what is up to date and records it in ``dvc.lock``, so the flow and DVC never disagree.
"""
