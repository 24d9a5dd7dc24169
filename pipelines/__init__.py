"""Prefect flows and deployments: the only place that imports prefect.

- :mod:`pipelines.training_flow`: every stage of :data:`thawline.stage_table.STAGES` in order,
  one Prefect task per stage (``thawline flow run``).
- :mod:`pipelines.retrain_flow`: the scheduled data-change flow, in tiers (``thawline flow
  retrain``); its decisions are :mod:`thawline.training.retrain_policy`'s.
- :mod:`pipelines.tasks`: one task per stage, ``dvc repro --single-item <stage>``.
- :mod:`pipelines.deploy`: both flows as deployments on cron schedules (``thawline flow serve``).

Every task runs its stage through DVC (``dvc repro --single-item <stage>``), which calls the same
``thawline stage <name>`` as ``dvc repro``: one copy of each stage's logic, and DVC alone decides
what is up to date and records it in ``dvc.lock``, so the flow and DVC never disagree.
"""
