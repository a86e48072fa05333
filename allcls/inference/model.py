"""A packaged model ready to answer (allcls.inference.spec plus its loaded networks and its
out-of-distribution gate): decoded images in, one row per image out. Every surface that answers for
new images (the pyfunc model behind `mlflow models serve`, batch prediction, the page) takes its
rows from `Model.rows`, and a patient's row from `Model.patient_rows`:

    label, prob_<class>..., set, refer, refer_reason, ood_score, [member_<name>... for an ensemble], error

`prob_<class>` are what `ModelSpec.probability_name` says (temperature-scaled only where that helped
on validation); `set` is the prediction set (classes joined by `|`, empty when no class fits);
`refer` is true where the model should not be taken at its word, and `refer_reason` says why
(allcls.inference.decision); `ood_score` is the gate's score (above the model's threshold: out of
distribution; empty for a model packaged without a gate); `error` is empty, or why the image could
not be read (its label and probabilities are then empty; other rows are unaffected). A referred
row keeps its label and probabilities for whoever wants them: no surface shows them as the answer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from allcls.errors import AllclsError
from allcls.inference import conformal, patients
from allcls.inference.decision import OOD, UNREADABLE, Decisions, combined
from allcls.inference.members import Member
from allcls.inference.ood import OodGate
from allcls.inference.outputs import Networks, Outputs
from allcls.inference.spec import ModelSpec
from allcls.inference.views import PLAIN

if TYPE_CHECKING:
    from allcls.inference.predictor import Predictor

ROW_COLUMNS = ("label", "set", "refer", "refer_reason", "ood_score")
RUNTIMES = ("torch", "onnx")  # what runs the members: torch, or ONNX Runtime on their exported graphs


@dataclass(frozen=True)
class Answer:
    """The model's probabilities (N, C), its decisions, the gate's scores (None without a gate) and
    the members' outputs they came from."""

    probabilities: np.ndarray
    decisions: Decisions
    ood: np.ndarray | None
    outputs: Outputs


class Model:
    """`predictor` answers (torch's or ONNX Runtime's); `explainer`, the torch networks, draws
    Grad-CAM maps (None where it was not asked for, or torch is not installed)."""

    def __init__(self, spec: ModelSpec, predictor: Networks, gate: OodGate | None = None,
                 explainer: Predictor | None = None):
        self.spec, self.predictor, self.gate, self.explainer = spec, predictor, gate, explainer

    @property
    def runtime(self) -> str:
        """Which runtime answers: torch or onnx."""
        return self.predictor.runtime

    @classmethod
    def load(cls, spec: ModelSpec, checkpoints: Sequence[str | Path], device: str | None = None,
             gate: str | Path | None = None, runtime: str = "torch", graphs: Sequence[str | Path] = (),
             explain: bool = False) -> Model:
        """The model of `spec` with its gate's statistics from `gate`, answering with `runtime`:
        torch, member i's network read from `checkpoints[i]` (on the GPU when there is one, unless
        `device` says otherwise), or ONNX Runtime, member i's graph from `graphs[i]`
        (allcls.inference.onnx_runtime), torch then imported only to `explain` (Grad-CAM needs the
        networks' gradients) and only where it is installed."""
        if runtime not in RUNTIMES:
            raise AllclsError(f"runtime={runtime!r} is not one of {list(RUNTIMES)}.")
        ood = OodGate.load(gate) if gate is not None else None
        if runtime == "torch":
            networks = torch_predictor(spec, checkpoints, device)
            return cls(spec, networks, ood, networks)
        if len(graphs) != len(spec.members):
            raise AllclsError("This packaged model has no ONNX graphs (it was packaged with export=none, or by "
                              "allcls before 0.6): use runtime=torch, or package its run again (allcls-package "
                              "run_id=<run> overwrite=true).")
        from allcls.inference.onnx_runtime import OnnxPredictor  # onnxruntime: only for this runtime

        explainer = torch_predictor(spec, checkpoints, device) if explain and find_spec("torch") else None
        return cls(spec, OnnxPredictor(spec.members, graphs, spec.classes, spec.rule), ood, explainer)

    def output_columns(self) -> list[str]:
        return output_columns(self.spec.classes, self.spec.members)

    def rows(self, images: Sequence[np.ndarray | None], errors: Sequence[str], views: Sequence[str] = PLAIN,
             show_progress: bool = True) -> pd.DataFrame:
        """One output row per decoded image (None where `errors` says why it could not be decoded)."""
        decoded = [image for image in images if image is not None]
        return self.rows_of(self.answer(decoded, views, show_progress) if decoded else None, images, errors)

    def rows_of(self, answer: Answer | None, images: Sequence[np.ndarray | None], errors: Sequence[str]
                ) -> pd.DataFrame:
        """`rows` from the answer on the decodable images (None where there is none)."""
        spec = self.spec
        readable = [i for i, image in enumerate(images) if image is not None]
        table = pd.DataFrame(index=range(len(images)), columns=self.output_columns())
        table["error"] = list(errors)
        table["refer"] = True
        table["refer_reason"] = UNREADABLE
        if answer is not None and readable:
            probabilities, decisions, ood, outputs = answer.probabilities, answer.decisions, answer.ood, answer.outputs
            table.loc[readable, "label"] = [spec.classes[k] for k in decisions.labels]
            for c, name in enumerate(spec.classes):
                table.loc[readable, f"prob_{name}"] = probabilities[:, c]
            table.loc[readable, "set"] = conformal.set_labels(decisions.members, spec.classes)
            table.loc[readable, "refer"] = decisions.refer
            table.loc[readable, "refer_reason"] = decisions.reasons
            if ood is not None:
                table.loc[readable, "ood_score"] = ood
            if len(spec.members) > 1:
                own = outputs.per_view.mean(axis=0)  # (members, images, classes)
                for m, member in enumerate(spec.members):
                    table.loc[readable, spec.member_column(member)] = [spec.classes[k] for k in own[m].argmax(axis=1)]
        for column in [*[f"prob_{c}" for c in spec.classes], "ood_score"]:
            table[column] = table[column].astype(float)
        table["refer"] = table["refer"].astype(bool)
        table["refer_reason"] = table["refer_reason"].astype(str)
        return table

    def answer(self, images: Sequence[np.ndarray], views: Sequence[str] = PLAIN, show_progress: bool = True
               ) -> Answer:
        """The decisions on decoded images, with what they were made from."""
        spec = self.spec
        outputs = self.predictor.outputs(images, views, "Predicting", show_progress, features=self.gate is not None)
        probabilities, vote = combined(outputs.per_view, self.predictor.weights, spec.rule, spec.temperature)
        ood = self.gate.scores(outputs.inputs, outputs.features, outputs.logits) if self.gate is not None else None
        return Answer(probabilities, spec.decision.decide(probabilities, spec.classes, vote, ood), ood, outputs)

    def patient_rows(self, rows: pd.DataFrame, patient_of: Sequence[str]) -> pd.DataFrame:
        """One row per patient from their cells' rows (`patient_of[i]`: row i's patient), with the
        cells' fields and `patient, cells, cells_used` (readable and in distribution: what the call
        is made from) and `cells_referred`. Without a patient rule (no validation subjects to fit one
        on) the call is the plain mean of the used cells, without a set."""
        spec = self.spec
        probabilities = rows[[f"prob_{c}" for c in spec.classes]].to_numpy(dtype=np.float64)
        readable = rows["error"].eq("").to_numpy() & np.isfinite(probabilities).all(axis=1)
        reasons = rows["refer_reason"].astype(str)
        ood = reasons.str.contains(OOD).to_numpy()
        used = readable & ~ood
        grouped = patients.group(np.nan_to_num(probabilities), list(patient_of), used, readable, ood)
        rule = spec.decision.patient or patients.PatientRule(patients.AGGREGATION, None, None, None, 0)
        decided = patients.decide(rule, grouped)
        referred = np.bincount([grouped.ids.index(p) for p in np.array(patient_of)[rows["refer"].to_numpy(bool)]],
                               minlength=len(grouped.ids))
        table = pd.DataFrame({"patient": grouped.ids, "cells": grouped.cells, "cells_used": grouped.used,
                              "cells_referred": referred})
        table["label"] = [spec.classes[k] if seen else None
                          for k, seen in zip(decided.labels, grouped.readable, strict=True)]
        for c, name in enumerate(spec.classes):
            table[f"prob_{name}"] = decided.probabilities[:, c]
        table["set"] = conformal.set_labels(decided.members, spec.classes)
        table["refer"] = decided.refer
        table["refer_reason"] = decided.reasons
        scores = rows["ood_score"].to_numpy(dtype=np.float64)
        table["ood_score"] = [float(np.nanmedian(scores[np.array(patient_of) == p])) if np.isfinite(
            scores[np.array(patient_of) == p]).any() else np.nan for p in grouped.ids]
        if len(spec.members) > 1:
            for member in spec.members:
                column = spec.member_column(member)
                table[column] = [_majority(rows.loc[np.array(patient_of) == p, column]) for p in grouped.ids]
        table["error"] = ["no readable image" if r == 0 else "" for r in grouped.readable]
        return table


def torch_predictor(spec: ModelSpec, checkpoints: Sequence[str | Path], device: str | None = None) -> Predictor:
    """The members' torch networks, read from their checkpoints, as a Predictor."""
    # Imported here, not above: a model answering with ONNX Runtime never imports torch.
    import torch

    from allcls.inference.predictor import Predictor
    from allcls.models.backbones import network_from_checkpoint

    on = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    networks = [network_from_checkpoint(path, map_location=on) for path in checkpoints]
    return Predictor(spec.members, networks, spec.classes, spec.rule, on, batch_size=64 if on.type == "cuda" else 16)


def output_columns(classes: Sequence[str], members: Sequence[Member]) -> list[str]:
    """The columns of a model's rows: the contract above."""
    votes = [ModelSpec.member_column(m) for m in members] if len(members) > 1 else []
    return ["label", *[f"prob_{c}" for c in classes], "set", "refer", "refer_reason", "ood_score", *votes, "error"]


def _majority(labels: pd.Series) -> str | None:
    """A member's most frequent label over a patient's readable cells."""
    counts = labels.dropna().value_counts()
    return str(counts.index[0]) if len(counts) else None
