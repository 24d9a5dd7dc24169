"""The code MLflow stores with each registered model ("models from code").

MLflow copies this file into the model and runs it when the model loads, instead of unpickling a
Python object: loading a thawline model never needs pickle. It only names the model class, so
thawline must be installed wherever the model is loaded or served.
"""

from mlflow.models import set_model

from thawline.tracking.pyfunc import ThawlineModel

set_model(ThawlineModel())
