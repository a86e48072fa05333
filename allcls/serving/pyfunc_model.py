"""A run or an ensemble as an MLflow pyfunc model: everything prediction needs, in one folder.

The folder (written by allcls.serving.package) holds each member's checkpoint and `allcls_model.json`
(allcls.inference.spec). `mlflow.pyfunc.load_model` on it gives a model whose `predict` takes a
DataFrame with a column `image` (base64-encoded image bytes, what `mlflow models serve` receives as
JSON) or `path` (image files; over HTTP only under the folder the server was allowed to read,
allcls.serving.model_inputs), and returns one row per image (allcls.inference.model); with a
`subject` column too, one more row per subject with that patient's decision. This module
is the pyfunc entry that MLflow itself loads: the only one outside allcls.tracking that imports
mlflow (model_code.py, the file MLflow runs to build the model, calls `name_the_model` here).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import set_model
from mlflow.protos.databricks_pb2 import BAD_REQUEST
from mlflow.pyfunc import PythonModel, scoring_server

from allcls.errors import AllclsError
from allcls.inference.model import Model
from allcls.inference.outputs import Networks
from allcls.inference.spec import OOD_KEY, ModelSpec
from allcls.inference.views import views_for
from allcls.serving.model_inputs import RequestError, allowed_folder, read_rows
from allcls.tracking import audit

# Set by MLflow's scoring server (`mlflow models serve`, the images `mlflow models build-docker` builds)
# in the process it serves from: there, requests come over HTTP.
SERVER_VARIABLE = getattr(scoring_server, "_SERVER_MODEL_PATH", "__pyfunc_model_path__")
RUNTIME_VARIABLE = "ALLCLS_RUNTIME"  # torch | onnx: what a served model answers with, whatever it was packaged with


class PackagedModel(PythonModel):
    """The pyfunc model. After `load_context`, `model` (allcls.inference.model) holds the spec and
    the members, ready to predict or explain."""

    model: Model
    answerer: audit.Answerer | None  # what a served model records its answers as (None: not recorded)
    served: bool  # behind an HTTP server: files are read only where its environment allows
    files_under: Path | None

    def load_context(self, context) -> None:
        spec_file = Path(context.artifacts["spec"])
        try:
            spec = ModelSpec.from_json(spec_file.read_text())
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as error:  # cut or edited
            raise AllclsError(f"{spec_file} is damaged ({type(error).__name__}: {str(error)[:200]}): this packaged "
                              "model cannot be used. Package its run again (allcls-package run_id=<run> "
                              "overwrite=true).") from None
        checkpoints = [context.artifacts[spec.checkpoint_key(i)] for i in range(len(spec.members))]
        graphs = [context.artifacts[spec.graph_key(i)] for i in range(len(spec.members))
                  if spec.graph_key(i) in context.artifacts]
        config = getattr(context, "model_config", None) or {}
        self.model = Model.load(spec, checkpoints, gate=context.artifacts.get(OOD_KEY),
                                runtime=runtime_of(spec, config), graphs=graphs, explain=bool(config.get("explain")))
        self.served = SERVER_VARIABLE in os.environ
        self.files_under = allowed_folder(self.served)
        # A served model records every answer (allcls.tracking.audit); in Python, whoever calls it decides.
        self.answerer = audit.served_model(model_file(spec_file)) if self.served else None

    @property
    def spec(self) -> ModelSpec:
        return self.model.spec

    @property
    def predictor(self) -> Networks:
        return self.model.predictor

    def predict(self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        started = time.time_ns()
        try:
            images, errors, digests = read_rows(model_input, self.files_under)
        except RequestError as error:  # the server answers 400 with this message, as JSON
            raise MlflowException(str(error), error_code=BAD_REQUEST) from None
        rows = self.model.rows(images, errors, views_for(bool((params or {}).get("tta"))))
        if "subject" in model_input.columns:
            rows = with_patients(self.model, rows, model_input["subject"])
        if self.served:
            audit.record(self.answerer, "serve", digests, rows, started)
        # JSON has no NaN: a server answers null where a value is missing (an unreadable image's label
        # and probabilities), which every JSON parser reads; in Python the columns keep their dtypes.
        return rows.astype(object).where(rows.notna(), None) if self.served else rows


def runtime_of(spec: ModelSpec, model_config: dict[str, Any]) -> str:
    """Which runtime answers: $ALLCLS_RUNTIME (a server's choice), else `runtime` in the model config
    (mlflow.pyfunc.load_model(..., model_config={"runtime": "torch"})), else the packaged default.
    `explain` in the model config also loads the torch networks for Grad-CAM where torch is installed."""
    return os.environ.get(RUNTIME_VARIABLE) or model_config.get("runtime") or spec.runtime


def with_patients(model: Model, rows: pd.DataFrame, subjects: pd.Series) -> pd.DataFrame:
    """With a `subject` column in the input: each cell's row with `level` = cell and its subject,
    then one row per subject (`level` = patient, and `cells`, `cells_used`, `cells_referred`) with
    the patient's decision (allcls.inference.model.Model.patient_rows). Cells without a subject get
    no patient."""
    named = subjects.map(lambda s: None if s is None or (isinstance(s, float) and np.isnan(s)) or not str(s).strip()
                         else str(s))
    cells = rows.copy()
    cells.insert(0, "level", "cell")
    cells.insert(1, "subject", named.tolist())
    known = named.notna().to_numpy()
    if not known.any():
        return cells
    patients = model.patient_rows(rows[known].reset_index(drop=True), named[known].tolist())
    patients = patients.rename(columns={"patient": "subject"})
    patients.insert(0, "level", "patient")
    return pd.concat([cells, patients], ignore_index=True)


def model_file(inside: Path) -> Path:
    """The MLmodel file of the model folder that holds `inside` (one of its artifacts)."""
    for folder in inside.parents:
        if (folder / "MLmodel").is_file():
            return folder / "MLmodel"
    return inside.parent / "MLmodel"  # not in a model folder: audit.served_model says it cannot be recorded


def name_the_model() -> None:
    """What a packaged model's code file (model_code.py) runs: this class is the model MLflow builds."""
    set_model(PackagedModel())
