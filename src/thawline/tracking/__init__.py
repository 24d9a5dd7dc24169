"""MLflow tracking and registry: the only package in thawline that imports mlflow.

``stage_run`` gives each stage a run (nested under the pipeline's parent run), ``registry``
logs, registers and gates models, ``pyfunc`` is the served model, and ``load_model`` loads a
registered or saved model for ``thawline predict``.
"""

from thawline.errors import RegistryError
from thawline.tracking.loading import Predictor, load_classifier_from, load_model
from thawline.tracking.runs import pipeline_run, stage_run
from thawline.tracking.store import mlflow_errors, tracking_uri
from thawline.tracking.tracker import NullTracker, Tracker

__all__ = [
    "NullTracker",
    "Predictor",
    "RegistryError",
    "Tracker",
    "load_classifier_from",
    "load_model",
    "mlflow_errors",
    "pipeline_run",
    "stage_run",
    "tracking_uri",
]
