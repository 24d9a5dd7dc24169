"""Input a model refuses: the error its predict raises, which MLflow's scoring server answers
with HTTP 400 and the message as written, and which ``thawline predict`` reports as bad input
(exit 2) through :func:`thawline.tracking.store.mlflow_errors`."""

from __future__ import annotations

from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE


class InputRefused(MlflowException):
    """A bad-input error that MLflow's scoring server answers with HTTP 400, as written here.

    The server rewrites a failed prediction's message to ``Failed to predict data '<the whole
    request as a DataFrame>'. Error: ...``, echoing the client's data back (mlflow 3.17,
    ``scoring_server.invocations``). The message is fixed when the error is made; later
    assignments are ignored.
    """

    @property
    def message(self) -> str:
        return self._refusal

    @message.setter
    def message(self, value: str) -> None:
        if not hasattr(self, "_refusal"):  # the first assignment is MlflowException.__init__'s
            self._refusal = value


def invalid(message: str) -> MlflowException:
    """A bad-input error that MLflow's scoring server answers with HTTP 400."""
    return InputRefused(message, error_code=INVALID_PARAMETER_VALUE)
