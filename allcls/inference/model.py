"""A packaged model ready to answer (allcls.inference.spec plus its loaded networks): decoded images
in, one row per image out. Every surface that answers for new images (the pyfunc model behind
`mlflow models serve`, batch prediction, the page) takes its rows from `Model.rows`:

    label, prob_<class>..., set, refer, [member_<name>... for an ensemble], error

`prob_<class>` are temperature-scaled where packaging fitted a temperature; `set` is the prediction
set (classes joined by `|`); `refer` is true where the set holds more than one class; `error` is
empty, or why the image could not be read (its other fields are then empty; other rows are
unaffected)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from allcls.inference import conformal
from allcls.inference.calibration import calibrated
from allcls.inference.predictor import Predictor
from allcls.inference.spec import ModelSpec
from allcls.inference.views import PLAIN
from allcls.models.backbones import network_from_checkpoint


class Model:
    def __init__(self, spec: ModelSpec, predictor: Predictor):
        self.spec, self.predictor = spec, predictor

    @classmethod
    def load(cls, spec: ModelSpec, checkpoints: Sequence[str | Path], device: torch.device | str | None = None
             ) -> Model:
        """The model of `spec` with member i's network read from `checkpoints[i]` (on the GPU when
        there is one, unless `device` says otherwise)."""
        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        networks = [network_from_checkpoint(path, map_location=device) for path in checkpoints]
        predictor = Predictor(spec.members, networks, spec.classes, spec.rule, device,
                              batch_size=64 if device.type == "cuda" else 16)
        return cls(spec, predictor)

    def output_columns(self) -> list[str]:
        spec = self.spec
        members = [spec.member_column(m) for m in spec.members] if len(spec.members) > 1 else []
        return ["label", *[f"prob_{c}" for c in spec.classes], "set", "refer", *members, "error"]

    def rows(self, images: Sequence[np.ndarray | None], errors: Sequence[str], views: Sequence[str] = PLAIN,
             show_progress: bool = True) -> pd.DataFrame:
        """One output row per decoded image (None where `errors` says why it could not be decoded)."""
        spec = self.spec
        readable = [i for i, image in enumerate(images) if image is not None]
        table = pd.DataFrame(index=range(len(images)), columns=self.output_columns())
        table["error"] = list(errors)
        if readable:
            decoded = [image for image in images if image is not None]
            per_view = self.predictor.view_probabilities(decoded, views, desc="Predicting", show_progress=show_progress)
            probabilities = self.calibrated(self.predictor.combine_views(list(per_view)))
            members = self.sets(probabilities)
            table.loc[readable, "label"] = [spec.classes[k] for k in probabilities.argmax(axis=1)]
            for c, name in enumerate(spec.classes):
                table.loc[readable, f"prob_{name}"] = probabilities[:, c]
            table.loc[readable, "set"] = conformal.set_labels(members, spec.classes)
            table.loc[readable, "refer"] = conformal.referred(members)
            if len(spec.members) > 1:
                own = sum(per_view) / len(per_view)  # (members, images, classes)
                for m, member in enumerate(spec.members):
                    table.loc[readable, spec.member_column(member)] = [spec.classes[k] for k in own[m].argmax(axis=1)]
        for column in [f"prob_{c}" for c in spec.classes]:
            table[column] = table[column].astype(float)
        table["refer"] = table["refer"].astype("boolean")
        return table

    def calibrated(self, probabilities: np.ndarray) -> np.ndarray:
        return calibrated(probabilities, self.spec.temperature)

    def sets(self, probabilities: np.ndarray) -> np.ndarray:
        """Prediction sets (images, classes); the top class alone where the package has no referral rule."""
        if self.spec.threshold is None:
            return np.eye(len(self.spec.classes), dtype=bool)[probabilities.argmax(axis=1)]
        return conformal.prediction_sets(probabilities, self.spec.threshold)
