"""A run or an ensemble as an MLflow pyfunc model: everything prediction needs, in one folder.

The folder (written by allcls.serving.package) holds each member's checkpoint and `allcls_model.json`
(allcls.inference.spec). `mlflow.pyfunc.load_model` on it gives a model whose `predict` takes a
DataFrame with a column `image` (base64-encoded image bytes, what `mlflow models serve` receives as
JSON) or `path` (image files), and returns one row per image (allcls.inference.model); with a
`subject` column too, one more row per subject with that patient's decision. This module
is the pyfunc entry that MLflow itself loads: the only one outside allcls.tracking that imports
mlflow (model_code.py, the file MLflow runs to build the model, calls `name_the_model` here).
"""

from __future__ import annotations

import base64
import binascii
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from mlflow.models import set_model
from mlflow.pyfunc import PythonModel

from allcls.data.images import ImageReadError
from allcls.inference.decoding import decode_limited, read_bytes
from allcls.inference.model import Model
from allcls.inference.predictor import Predictor
from allcls.inference.spec import OOD_KEY, ModelSpec
from allcls.inference.views import views_for


class PackagedModel(PythonModel):
    """The pyfunc model. After `load_context`, `model` (allcls.inference.model) holds the spec and
    the members, ready to predict or explain."""

    model: Model

    def load_context(self, context) -> None:
        spec = ModelSpec.from_json(Path(context.artifacts["spec"]).read_text())
        checkpoints = [context.artifacts[spec.checkpoint_key(i)] for i in range(len(spec.members))]
        self.model = Model.load(spec, checkpoints, gate=context.artifacts.get(OOD_KEY))

    @property
    def spec(self) -> ModelSpec:
        return self.model.spec

    @property
    def predictor(self) -> Predictor:
        return self.model.predictor

    def predict(self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        images, errors = decode_inputs(model_input)
        rows = self.model.rows(images, errors, views_for(bool((params or {}).get("tta"))))
        return with_patients(self.model, rows, model_input["subject"]) if "subject" in model_input.columns else rows


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


def decode_inputs(model_input: pd.DataFrame) -> tuple[list[np.ndarray | None], list[str]]:
    """The images of a pyfunc input (column `image`: base64 bytes, or `path`: files), each decoded
    to RGB, or None with the reason it could not be."""
    if "image" in model_input.columns:
        sources, kind = model_input["image"].tolist(), "image"
    elif "path" in model_input.columns:
        sources, kind = model_input["path"].tolist(), "path"
    else:
        raise ValueError(f"the input has columns {list(model_input.columns)}: give `image` (base64-encoded image "
                         "bytes) or `path` (image files)")
    images: list[np.ndarray | None] = []
    errors = []
    for source in sources:
        try:
            if kind == "image":
                data, where = base64.b64decode(source, validate=True), "<upload>"
            else:
                data, where = read_bytes(source), source
            images.append(decode_limited(data, where))
            errors.append("")
        except binascii.Error:
            images.append(None)
            errors.append("not base64-encoded image bytes")
        except ImageReadError as error:
            images.append(None)
            errors.append(f"{source if kind == 'path' else 'the image'}: {error.reason}")
    return images, errors


def name_the_model() -> None:
    """What a packaged model's code file (model_code.py) runs: this class is the model MLflow builds."""
    set_model(PackagedModel())
