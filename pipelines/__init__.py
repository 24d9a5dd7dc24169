"""Prefect flows and deployments: the only place that imports prefect.

The training flow (prepare -> extract -> train_head -> finetune -> evaluate -> register) wraps
the same stage functions that ``dvc.yaml`` calls; it lands with the orchestration issue.
"""
