"""A run or an ensemble as an MLflow pyfunc model: everything prediction needs, in one folder.

The folder (written by allcls.package) holds each member's checkpoint and `allcls_model.json`:
the class names, the combining rule, each member's weight and preprocessing (input size,
normalisation, region-of-interest crop), the temperature fitted on validation, and the referral
rule (the conformal threshold for a coverage). `mlflow.pyfunc.load_model` on it gives a model
whose `predict` takes a DataFrame with a column `image` (base64-encoded image bytes, what
`mlflow models serve` receives as JSON) or `path` (image files), and returns one row per image:
`label`, `prob_<class>`..., `set`, `refer`, for an ensemble each member's label, and `error` (empty,
or why that image could not be read; the other rows are unaffected).
"""

from __future__ import annotations

import base64
import binascii
import io
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd
import torch
from PIL import Image

from allcls.data.images import ImageReadError, decode_image
from allcls.data.transforms import InputSpec
from allcls.inference import conformal
from allcls.inference.calibration import apply_temperature
from allcls.inference.predictor import Predictor, PredictorMember
from allcls.metrics.names import metric_safe
from allcls.models.backbones import network_from_checkpoint

SPEC_FILE = "allcls_model.json"
FORMAT = 1
MAX_PIXELS = 50_000_000  # a larger upload is refused by name, not decoded into gigabytes


@dataclass(frozen=True)
class MemberSpec:
    name: str
    weight: float
    checkpoint: str  # the artifact key of its checkpoint file
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    roi_crop: bool
    backbone: str = ""  # timm's name, for people (the checkpoint says it again)


@dataclass(frozen=True)
class ModelSpec:
    """What `allcls_model.json` holds."""

    classes: list[str]
    rule: str
    members: list[MemberSpec]
    temperature: float | None = None
    coverage: float | None = None  # the referral rule: sets for this coverage...
    threshold: float | None = None  # ...hold classes while their mass stays within this
    source: dict[str, str] = field(default_factory=dict)  # run id, kind, dataset, classes, split hash
    test_scores: dict[str, list[float]] = field(default_factory=dict)  # metric -> [value, ci_low, ci_high]
    format: int = FORMAT

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> "ModelSpec":
        values = json.loads(text)
        values["members"] = [MemberSpec(**{**m, "mean": tuple(m["mean"]), "std": tuple(m["std"])})
                             for m in values["members"]]
        return cls(**values)

    def member_column(self, member: MemberSpec) -> str:
        return f"member_{metric_safe(member.name)}"

    def output_columns(self) -> list[str]:
        members = [self.member_column(m) for m in self.members] if len(self.members) > 1 else []
        return ["label", *[f"prob_{c}" for c in self.classes], "set", "refer", *members, "error"]


class PackagedModel(mlflow.pyfunc.PythonModel):
    """The pyfunc model. After `load_context`, `predictor` holds the members, ready to predict or explain."""

    def load_context(self, context) -> None:
        self.spec = ModelSpec.from_json(Path(context.artifacts["spec"]).read_text())
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        members = []
        for member in self.spec.members:
            model = network_from_checkpoint(context.artifacts[member.checkpoint], map_location=device)
            preprocessing = InputSpec(member.input_size, member.mean, member.std)
            members.append(PredictorMember(member.name, model, preprocessing, member.roi_crop, member.weight))
        self.predictor = Predictor(members, self.spec.classes, self.spec.rule, device,
                                   batch_size=64 if device.type == "cuda" else 16)

    def predict(self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        images, errors = decode_inputs(model_input)
        views = ("identity", "hflip", "vflip", "rot90", "rot180", "rot270") if (params or {}).get("tta") else \
            ("identity",)
        return self.rows(images, errors, views)

    def rows(self, images: list[np.ndarray | None], errors: list[str], views=("identity",),
             show_progress: bool = True) -> pd.DataFrame:
        """Output rows for decoded images (None where `errors` says why not)."""
        readable = [i for i, image in enumerate(images) if image is not None]
        table = pd.DataFrame(index=range(len(images)), columns=self.spec.output_columns())
        table["error"] = errors
        if readable:
            per_view = self.predictor.view_probabilities([images[i] for i in readable], views, desc="Predicting",
                                                         show_progress=show_progress)
            probabilities = self.calibrated(self.predictor.combine_views(list(per_view)))
            members = self.sets(probabilities)
            table.loc[readable, "label"] = [self.spec.classes[k] for k in probabilities.argmax(axis=1)]
            for c, name in enumerate(self.spec.classes):
                table.loc[readable, f"prob_{name}"] = probabilities[:, c]
            table.loc[readable, "set"] = conformal.set_labels(members, self.spec.classes)
            table.loc[readable, "refer"] = members.sum(axis=1) > 1
            if len(self.spec.members) > 1:
                own = sum(per_view) / len(per_view)  # (members, images, classes)
                for m, member in enumerate(self.spec.members):
                    table.loc[readable, self.spec.member_column(member)] = [self.spec.classes[k]
                                                                            for k in own[m].argmax(axis=1)]
        for column in [f"prob_{c}" for c in self.spec.classes]:
            table[column] = table[column].astype(float)
        table["refer"] = table["refer"].astype("boolean")
        return table

    def calibrated(self, probabilities: np.ndarray) -> np.ndarray:
        temperature = self.spec.temperature
        return probabilities if temperature is None else apply_temperature(probabilities, temperature)

    def sets(self, probabilities: np.ndarray) -> np.ndarray:
        """Prediction sets (images, classes); just the top class when the package has no referral rule."""
        if self.spec.threshold is None:
            return np.eye(len(self.spec.classes), dtype=bool)[probabilities.argmax(axis=1)]
        return conformal.prediction_sets(probabilities, self.spec.threshold)


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
    images, errors = [], []
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


def read_bytes(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as error:
        raise ImageReadError.for_file(path, error.strerror or str(error)) from None


def decode_limited(data: bytes, where: str) -> np.ndarray:
    """An image decoded to RGB, refusing one of more than MAX_PIXELS pixels before decoding it (a
    10,000 x 10,000 image is 300 MB decoded): its header says its size."""
    try:
        with Image.open(io.BytesIO(data)) as header:  # reads the header, not the pixels
            width, height = header.size
    except Image.DecompressionBombError:
        raise ImageReadError.for_file(where, "the image is far larger than a cell image; send a crop") from None
    except (OSError, ValueError):
        pass  # a format PIL cannot read: OpenCV may, and decode_image says why not by name
    else:
        if width * height > MAX_PIXELS:
            raise ImageReadError.for_file(where, f"{width} x {height} pixels is more than "
                                                 f"{MAX_PIXELS // 1_000_000} megapixels; send a crop of the cell")
    return decode_image(data, where)
