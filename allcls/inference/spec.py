"""What a packaged model is, as `allcls_model.json` holds it: the class names, the combining rule,
its members (weight, backbone, preprocessing), its decision rule (allcls.inference.decision:
temperature, prediction sets, protected miss rate, out-of-distribution threshold, patient rule, each
with a note on how it was fitted), where it came from, what its classes mean and what it learnt
from, and its headline test scores. Each member's checkpoint sits beside it under the artifact key
`member_<index>`, the gate's statistics under `ood`."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from allcls.data.preprocessing import InputSpec
from allcls.inference.combining import Rule
from allcls.inference.decision import DecisionRule, SetRule
from allcls.inference.members import Member, Preprocessing
from allcls.metrics.names import metric_safe

SPEC_FILE = "allcls_model.json"
FORMAT = 2  # the file's layout; a member is one flat object in it. 1: a temperature and one threshold (0.1-0.2)
OOD_KEY = "ood"  # the artifact key of the out-of-distribution gate's statistics (allcls.inference.ood)


@dataclass(frozen=True)
class ModelSpec:
    classes: list[str]
    rule: Rule
    members: list[Member]
    decision: DecisionRule = field(default_factory=DecisionRule)
    source: dict[str, str] = field(default_factory=dict)  # run id, kind, dataset, classes, split hash
    test_scores: dict[str, list[float]] = field(default_factory=dict)  # metric -> [value, ci_low, ci_high]
    # What the model learnt from, in words for whoever reads its answers (allcls.serving.provenance):
    # `class_meaning` {class: what it is}, `synthetic`, `splits` {split: [cells, subjects]}, `split`.
    # Empty for models packaged before allcls 0.4.
    about: dict[str, Any] = field(default_factory=dict)
    # The members as ONNX graphs (allcls.inference.onnx_export), empty where not exported: `format`,
    # `opset`, how the graphs agree with the torch networks on the validation cells
    # (`max_abs_difference` of a probability, `label_agreement`, `cells`), and the `runtime` the
    # model answers with unless asked otherwise.
    export: dict[str, Any] = field(default_factory=dict)
    format: int = FORMAT

    @staticmethod
    def checkpoint_key(index: int) -> str:
        """The artifact key of member `index`'s checkpoint."""
        return f"member_{index}"

    @staticmethod
    def graph_key(index: int) -> str:
        """The artifact key of member `index`'s ONNX graph."""
        return f"onnx_{index}"

    @property
    def runtime(self) -> str:
        """What the model answers with unless asked otherwise: torch, or onnx where it was exported so."""
        return str(self.export.get("runtime", "torch"))

    @property
    def temperature(self) -> float | None:
        return self.decision.temperature

    @property
    def coverage(self) -> float | None:
        return self.decision.sets.coverage if self.decision.sets is not None else None

    @property
    def probability_name(self) -> str:
        """What the `prob_<class>` numbers are, in words a reader of a row can act on."""
        what = "the members' weighted mean probability (the label is their vote)" if self.rule == "vote" \
            else "probability"
        return f"{what}, temperature-scaled on validation" if self.temperature is not None else \
            f"{what}, uncalibrated (no temperature helped on validation)"

    @staticmethod
    def member_column(member: Member) -> str:
        """The output column of a member's own label (an ensemble's rows carry each member's vote)."""
        return f"member_{metric_safe(member.name)}"

    def to_json(self) -> str:
        values = asdict(self)
        values["members"] = [_flat(member, self.checkpoint_key(index)) for index, member in enumerate(self.members)]
        return json.dumps(values, indent=2)

    @classmethod
    def from_json(cls, text: str) -> ModelSpec:
        values = json.loads(text)
        values["members"] = [_member(m) for m in values["members"]]
        if values.get("format", 1) == 1:  # a temperature and one marginal threshold, the top class filling empty sets
            temperature, coverage, threshold = (values.pop(k, None) for k in ("temperature", "coverage", "threshold"))
            sets = SetRule("marginal", coverage, [threshold] * len(values["classes"])) if threshold is not None \
                else None
            values["decision"] = DecisionRule(temperature, "fitted on validation by allcls 0.1", sets,
                                              "packaged by allcls 0.1: marginal sets" if sets else "none")
        else:
            values["decision"] = DecisionRule.from_dict(values["decision"])
        values["format"] = FORMAT
        return cls(**values)


def _flat(member: Member, checkpoint: str) -> dict[str, Any]:
    spec = member.preprocessing.spec
    return {"name": member.name, "weight": member.weight, "checkpoint": checkpoint, "input_size": spec.size,
            "mean": list(spec.mean), "std": list(spec.std), "roi_crop": member.preprocessing.roi_crop,
            "backbone": member.backbone}


def _member(values: dict[str, Any]) -> Member:
    spec = InputSpec(int(values["input_size"]), tuple(values["mean"]), tuple(values["std"]))
    return Member(values["name"], float(values["weight"]), values.get("backbone", ""),
                  Preprocessing(spec, bool(values["roi_crop"])))
