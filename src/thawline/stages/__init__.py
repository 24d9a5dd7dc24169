"""Pipeline stages: each module is one ``run(cfg) -> StageResult``, for the CLI, Prefect and tests.

The list of stages, their order and what each is, is :data:`thawline.stage_table.STAGES`.
"""
