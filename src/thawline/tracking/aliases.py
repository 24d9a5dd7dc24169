"""Registry aliases: which version ``champion`` and ``challenger`` point at, and why an alias
thawline set is gone (thawline never falls back to the latest version)."""

from __future__ import annotations

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from thawline.tracking.store import with_retry

CHAMPION, CHALLENGER = "champion", "challenger"
TAG_CHAMPION = "thawline.champion_version"  # on the registered model: the champion thawline set


def alias_version(client: MlflowClient, name: str, alias: str) -> str | None:
    """The version an alias points at; None when the alias or the model does not exist."""
    try:
        model = with_retry(lambda: client.get_registered_model(name))
    except MlflowException as err:
        if err.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise
    return model.aliases.get(alias)


def aliases(client: MlflowClient, name: str) -> dict[str, int]:
    """Alias -> version of a registered model."""
    model = with_retry(lambda: client.get_registered_model(name))
    return {alias: int(number) for alias, number in model.aliases.items()}


def recorded_champion(client: MlflowClient, name: str) -> str | None:
    """The champion version thawline last set (a registered-model tag), if any."""
    try:
        model = with_retry(lambda: client.get_registered_model(name))
    except MlflowException:
        return None
    return (model.tags or {}).get(TAG_CHAMPION)


def dangling_alias_message(client: MlflowClient, name: str, alias: str, recorded: str) -> str:
    """Why an alias thawline set is gone, and how to fix it."""
    try:
        with_retry(lambda: client.get_model_version(name, recorded))
        what = f"version {recorded} still exists, but the alias was removed"
    except MlflowException:
        what = f"it pointed at version {recorded}, which has been deleted"
    return (
        f"registered model '{name}': alias '{alias}' is gone ({what}). thawline never falls "
        f"back to the latest version. Point it at a version you trust (MlflowClient()."
        f"set_registered_model_alias('{name}', '{alias}', VERSION)), or delete the registered "
        f"model tag '{TAG_CHAMPION}' to let the next registration become champion"
    )
