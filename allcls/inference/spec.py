"""What a packaged model is, as `allcls_model.json` holds it: the class names, the combining rule,
its members (weight, backbone, preprocessing), the temperature fitted on validation, the referral
rule (the conformal threshold for a coverage), where it came from and its headline test scores.
Each member's checkpoint sits beside it under the artifact key `member_<index>`."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from allcls.data.preprocessing import InputSpec
from allcls.inference.combining import Rule
from allcls.inference.members import Member, Preprocessing
from allcls.metrics.names import metric_safe

SPEC_FILE = "allcls_model.json"
FORMAT = 1  # the file's layout; a member is one flat object in it (as models packaged before 0.2 wrote it)


@dataclass(frozen=True)
class ModelSpec:
    classes: list[str]
    rule: Rule
    members: list[Member]
    temperature: float | None = None
    coverage: float | None = None  # the referral rule: sets for this coverage...
    threshold: float | None = None  # ...hold classes while their mass stays within this
    source: dict[str, str] = field(default_factory=dict)  # run id, kind, dataset, classes, split hash
    test_scores: dict[str, list[float]] = field(default_factory=dict)  # metric -> [value, ci_low, ci_high]
    format: int = FORMAT

    @staticmethod
    def checkpoint_key(index: int) -> str:
        """The artifact key of member `index`'s checkpoint."""
        return f"member_{index}"

    def member_column(self, member: Member) -> str:
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
