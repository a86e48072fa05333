"""Packaged models in MLflow: saved as pyfunc model folders, logged into their run, registered as
versions with aliases, listed, and loaded back from any of their URIs (models:/<name>@<alias>,
models:/<name>/<version>, runs:/<run id>/model, or a local folder). Nothing here sets MLflow's
global tracking URI: every call goes through the Tracker's store."""

from __future__ import annotations

import importlib.metadata
import json
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow.artifacts
import mlflow.pyfunc
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema
from mlflow.utils.validation import _validate_model_alias_name, _validate_model_alias_name_reserved

from allcls.errors import AllclsError
from allcls.tracking.tracker import Tracker

if TYPE_CHECKING:
    from allcls.tracking.logged_model import LoggedModel

MODEL_PATH = "model"  # where a run keeps its packaged model
COLUMNS_TAG = "output_columns"  # a registered version's output columns, comma-separated


@dataclass(frozen=True)
class RegisteredModel:
    name: str
    aliases: dict[str, str]  # alias -> version
    versions: list[str]  # newest first


def save(folder: Path, code_file: Path, artifacts: Mapping[str, str], inputs: Sequence[tuple[str, str]],
         outputs: Sequence[tuple[str, str]], params: Mapping[str, bool], input_example: pd.DataFrame,
         config: Mapping[str, Any]) -> None:
    """A pyfunc model folder built from `code_file` (MLflow's models-from-code: nothing is pickled),
    with its files, its input and output columns as (name, type), its params with defaults, and its
    model config (what `mlflow.pyfunc.load_model(..., model_config=...)` may change when loading)."""
    signature = ModelSignature(inputs=Schema([ColSpec(kind, name, required=False) for name, kind in inputs]),
                               outputs=Schema([ColSpec(kind, name) for name, kind in outputs]),
                               params=ParamSchema([ParamSpec(name, "boolean", default)
                                                   for name, default in params.items()]))
    mlflow.pyfunc.save_model(str(folder), python_model=str(code_file), artifacts=dict(artifacts),
                             signature=signature, input_example=input_example, pip_requirements=served_requirements(),
                             model_config=dict(config))


SERVED_MODULES = ("allcls", "mlflow", "torch", "timm", "numpy", "pandas", "PIL", "scipy", "sklearn", "cv2")


def served_requirements() -> list[str]:
    """What a served model imports, pinned at the versions that packaged it. Written out rather than
    left to MLflow's inference, which loads the model in a subprocess (9 s of every packaging here)
    and whose list missed torch and timm while naming colorama and trio."""
    distributions = importlib.metadata.packages_distributions()
    pinned = []
    for module in SERVED_MODULES:
        names = distributions.get(module, [])
        name = module if module in names else (names[0] if names else None)
        if name is not None:
            pinned.append(f"{name}=={importlib.metadata.version(name)}")
    return pinned


def check_alias(alias: str) -> None:
    """Refuse an alias MLflow would refuse (after packaging), in one line, before anything is done."""
    try:
        _validate_model_alias_name(alias)
        _validate_model_alias_name_reserved(alias)
    except MlflowException as error:
        raise AllclsError(f"alias={alias}: {error.message} Choose another alias, e.g. alias=champion.") from None


def check_alias_move(tracker: Tracker, name: str, alias: str, columns: Sequence[str], force: bool) -> None:
    """Refuse to point `alias` of `name` at a model answering with other `columns` than the version
    it names now (every client of name@alias would get other columns) unless `force`."""
    try:
        current = tracker.client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return  # no such model or alias yet
    before = current.tags.get(COLUMNS_TAG)
    if before is not None:
        old, new = before.split(","), list(columns)
    else:  # registered before versions carried their columns: its classes say its probability columns
        old = [f"prob_{c}" for c in current.tags.get("classes", "").split(",") if c]
        new = [c for c in columns if c.startswith("prob_")]
    if old == new or force:
        return
    gone, added = [c for c in old if c not in new], [c for c in new if c not in old]
    change = "; ".join(part for part in (f"without {', '.join(gone)}" if gone else "",
                                         f"with {', '.join(added)}" if added else "") if part) or "in another order"
    raise AllclsError(f"{name}@{alias} is version {current.version}, and this model answers with other columns "
                      f"({change}): every client of {name}@{alias} would read other columns. Register it under "
                      f"another alias= or register_as=, or pass force_alias=true to move {alias} anyway.")


def register(tracker: Tracker, run_id: str, logged: LoggedModel, name: str, alias: str | None,
             tags: Mapping[str, str], description: str) -> str:
    """Register the LoggedModel the run was packaged as (allcls.tracking.logged_model) as a new
    version of `name`, with `tags` and `description` (the version's page shows it), pointing `alias`
    at it; the run is tagged with the version. Returns the version.

    The version's files are the LoggedModel's copy: packaging the run again (overwrite=true)
    replaces the run's `model/`, never what a registered version answers with."""
    client = tracker.client
    try:
        try:
            client.create_registered_model(name)
        except MlflowException as error:
            if error.error_code not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
                raise
        # Its files' location as the source (a models:/<id> source is looked up in MLflow's global
        # store, not this client's); model_id links the version to the LoggedModel all the same.
        version = client.create_model_version(name, logged.artifact_location, run_id=run_id, tags=dict(tags),
                                              description=shortened(description, logged.artifact_location),
                                              model_id=logged.model_id).version
        # The LoggedModel's link to its versions, as mlflow.register_model writes it (the UI reads this tag).
        client.set_logged_model_tags(logged.model_id, {"registered_model": name, "mlflow.modelVersions": json.dumps(
            [{"name": name, "version": version}])})
        if alias:
            client.set_registered_model_alias(name, alias, version)
    except MlflowException as error:
        raise AllclsError(f"Could not register the model as {name!r}: {error.message}") from None
    tracker.run(run_id).set_tags({"registered_model_version": f"{name}/{version}"})
    return str(version)


DESCRIPTION_LIMIT = 5000  # characters: the registry's column on PostgreSQL and MySQL (SQLite does not check)


def shortened(card: str, location: str) -> str:
    """A model card as a version's description: whole when it fits the registry's column, else its
    first sections that do, and where the whole card is."""
    if len(card) <= DESCRIPTION_LIMIT:
        return card
    note = f"\n\n*The whole card (too long for the registry) is `model_card.md` in the model's files: {location}.*\n"
    kept = ""
    for section in card.split("\n## "):
        candidate = f"{kept}\n## {section}" if kept else section
        if len(candidate) + len(note) > DESCRIPTION_LIMIT:
            break
        kept = candidate
    return (kept or card[: DESCRIPTION_LIMIT - len(note)]).rstrip() + note


def registered_models(tracker: Tracker) -> list[RegisteredModel]:
    """Every registered model of the store, the most recently updated first."""
    try:
        found = sorted(tracker.client.search_registered_models(), key=lambda m: -m.last_updated_timestamp)
        models = []
        for model in found:
            versions = {str(v.version) for v in tracker.client.search_model_versions(f"name='{model.name}'")}
            aliases = {alias: str(version) for alias, version in (getattr(model, "aliases", {}) or {}).items()}
            models.append(RegisteredModel(model.name, aliases, sorted(versions, key=int, reverse=True)))
    except MlflowException as error:
        raise AllclsError(error.message) from None
    return models


def version_card(tracker: Tracker, name: str, version: str) -> str:
    """A registered version's model card: the whole of `model_card.md` in its files, or its
    description (the card, shortened where the registry's column is too small) when those cannot
    be read."""
    found = tracker.client.get_model_version(name, version)
    if found.source:
        try:
            with tempfile.TemporaryDirectory(prefix="allcls-card-") as folder:
                card = mlflow.artifacts.download_artifacts(artifact_uri=f"{found.source.rstrip('/')}/model_card.md",
                                                           dst_path=folder, tracking_uri=tracker.tracking_uri)
                return Path(card).read_text()
        except (MlflowException, OSError):
            pass  # a model packaged without a card file, or files that are gone: the description says what it can
    return found.description or ""


class ModelUnavailable(AllclsError):
    """No model can be loaded from a URI; `reason` says why (MLflow's words)."""

    def __init__(self, uri: str, reason: str):
        super().__init__(f"Cannot load model {uri}: {reason}")
        self.reason = reason


def load(tracker: Tracker, uri: str, runtime: str | None = None, explain: bool = False) -> Any:
    """The python model (`unwrap_python_model`) behind a model URI of this store, or a local folder,
    answering with `runtime` (torch or onnx; None: the one it was packaged to answer with), with the
    torch networks for Grad-CAM too if `explain`; ModelUnavailable when there is none there."""
    config = {key: value for key, value in (("runtime", runtime), ("explain", explain)) if value} or None
    try:
        with tempfile.TemporaryDirectory(prefix="allcls-model-") as folder:
            return mlflow.pyfunc.load_model(str(_local_copy(tracker, uri, Path(folder))),
                                            model_config=config).unwrap_python_model()
    except ModelUnavailable:
        raise
    except MlflowException as error:
        raise ModelUnavailable(uri, error.message) from None
    except (AllclsError, OSError, KeyError) as error:  # AllclsError: a damaged model folder (its spec, a checkpoint)
        raise ModelUnavailable(uri, str(error)) from None


def _local_copy(tracker: Tracker, uri: str, folder: Path) -> Path:
    """The model folder `uri` names, downloaded from the store into `folder` (a local one as it is)."""
    if uri.startswith("runs:/"):
        run_id, _, path = uri.removeprefix("runs:/").partition("/")
        return Path(tracker.client.download_artifacts(run_id, path or MODEL_PATH, str(folder)))
    if uri.startswith("models:/"):
        name, alias, version = _model_reference(uri.removeprefix("models:/"))
        if alias is not None:
            found = tracker.client.get_model_version_by_alias(name, alias)
        else:
            assert version is not None  # _model_reference names an alias or a version
            found = tracker.client.get_model_version(name, version)
        assert found.source is not None  # MLflow registers every version from a source
        source = found.source.rstrip("/")
        if source.startswith("models:/m-"):  # a LoggedModel: its own artifact location
            source = tracker.client.get_logged_model(source.removeprefix("models:/")).artifact_location
        elif source.startswith(("runs:/", "models:/")):
            return _local_copy(tracker, source, folder)
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=str(folder),
                                                        tracking_uri=tracker.tracking_uri))
    return Path(uri)


def _model_reference(reference: str) -> tuple[str, str | None, str | None]:
    """'name@alias' -> (name, alias, None); 'name/3' -> (name, None, '3')."""
    if "@" in reference:
        name, alias = reference.split("@", 1)
        if name and alias:  # ('name@', an empty alias, names no version either)
            return name, alias, None
    else:
        name, _, version = reference.rpartition("/")
        if name and version:
            return name, None, version
    raise MlflowException(f"models:/{reference} names no version: use models:/<name>@<alias> or /<version>")
