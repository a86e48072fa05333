"""The words a clinician reads: each class named with what it is, why a cell or a patient is referred,
and what makes an answer less than clear (a small margin, members that disagree)."""

from __future__ import annotations

import math

import pandas as pd

from allcls.inference.decision import AMBIGUOUS, OOD, REASONS, UNCERTAIN, UNREADABLE
from allcls.inference.spec import ModelSpec
from allcls.serving.provenance import about_of

SMALL_MARGIN = 0.2  # between the two most probable classes: said, not shown as a clear answer (as is a
# most probable class under half the probability, which with four classes can still lead by 25 points)

PATIENT_REASONS = {
    UNREADABLE: "none of the patient's images could be read",
    OOD: "most of the patient's cells do not look like the cells this model was trained on",
    AMBIGUOUS: "more than one class is plausible for this patient at the chosen coverage",
    UNCERTAIN: "no class is as probable for this patient as for the validation patients of that class",
}


def named(spec: ModelSpec, label: str) -> str:
    """'all (leukemic B-lymphoblast ...)', or the bare class where the model's package says nothing."""
    meaning = about_of(spec).get("class_meaning", {}).get(label)
    return f"{label} ({meaning})" if meaning else label


def reasons_of(row: pd.Series) -> list[str]:
    return [r for r in str(row["refer_reason"]).split("; ") if r and r != "nan"]


def set_of(row: pd.Series) -> list[str]:
    value = row["set"]
    return [c for c in str(value).split("|") if c] if isinstance(value, str) else []


def referral_text(row: pd.Series, spec: ModelSpec) -> tuple[bool, str]:
    """(referred?, plain sentences saying why, or what the answer rests on) for a cell's row."""
    coverage, inside = spec.coverage, set_of(row)
    if bool(row["refer"]):
        why = []
        for reason in reasons_of(row):
            if reason == AMBIGUOUS and len(inside) > 1 and coverage:
                why.append(f"at {coverage:.0%} coverage the model has to keep {' or '.join(inside)} open for this "
                           "image; it cannot tell them apart here")
            elif reason == UNCERTAIN and coverage:
                why.append(f"no class is as probable as {coverage:.0%} of that class's validation cells were")
            else:
                why.append(REASONS.get(reason, reason))
        return True, "Refer to a human: " + "; ".join(why) + "."
    if coverage is None:
        return False, "This model has no prediction sets (its validation split was too small to fit them)."
    return False, (f"The prediction set is {inside[0] if inside else '?'} alone: at {coverage:.0%} coverage the "
                   "model excludes the other classes for this image.")


def caveats(row: pd.Series, spec: ModelSpec) -> list[str]:
    """What makes an answer less than clear: probabilities that are missing, a most probable class
    under half the probability or a small margin to the next, members that vote otherwise."""
    values = [float(row[f"prob_{c}"]) for c in spec.classes]
    if not all(math.isfinite(v) for v in values):
        return ["the model gave no probabilities for this image"]
    notes = []
    ranked = sorted(zip(values, spec.classes, strict=True), reverse=True)
    first, top = ranked[0]
    if len(ranked) > 1:
        second, runner = ranked[1]
        if first < 0.5:
            notes.append(f"no class holds half the probability: {top} {first:.0%}, {runner} {second:.0%}")
        elif first - second < SMALL_MARGIN:
            notes.append(f"small margin: {top} {first:.0%} against {runner} {second:.0%}")
    votes = [str(row[spec.member_column(m)]) for m in spec.members] if len(spec.members) > 1 else []
    dissent = [v for v in votes if v != str(row["label"])]
    if dissent:
        notes.append(f"the members disagree: {len(votes) - len(dissent)} of {len(votes)} say {row['label']}")
    return notes


def patient_text(row: pd.Series, spec: ModelSpec) -> tuple[bool, str]:
    """(referred?, the patient's call or why they are referred) for a patient's row."""
    counts = f"{int(row['cells_used'])} of {int(row['cells'])} cells used, {int(row['cells_referred'])} referred"
    if bool(row["refer"]):
        why = "; ".join(PATIENT_REASONS.get(r, REASONS.get(r, r)) for r in reasons_of(row))
        return True, f"Refer this patient to a human: {why} ({counts})."
    probability = float(row[f"prob_{row['label']}"])
    return False, (f"{named(spec, str(row['label']))}: {probability:.0%}, the mean over the patient's cells in "
                   f"distribution ({counts}).")


def patient_caveats(row: pd.Series, spec: ModelSpec) -> list[str]:
    """What makes a patient's call less than clear: the cells' caveats, most of their cells referred,
    or the protected classes as probable as a cell of them is not cleared at."""
    notes = caveats(row, spec)
    cells, referred = int(row["cells"]), int(row["cells_referred"])
    if cells and referred * 2 >= cells:
        notes.append(f"{referred} of {cells} cells were referred: look at them first")
    protect = spec.decision.protect
    if protect is not None and str(row["label"]) not in protect.classes:
        share = sum(float(row[f"prob_{c}"]) for c in protect.classes)
        if share >= protect.threshold:
            notes.append(f"{' / '.join(protect.classes)} at {share:.0%} for this patient: a cell that probable would "
                         f"not be cleared (threshold {protect.threshold:.0%})")
    return notes


MARKDOWN = str.maketrans({c: "\\" + c for c in "\\`*_{}[]<>()#!|~$"})


def plain(text: str, limit: int = 200) -> str:
    """A file name (or any text a user chose) as plain text inside Streamlit's Markdown: never a link,
    an image or formatting; cut to `limit` characters."""
    text = text if len(text) <= limit else text[: limit - 1] + "…"
    return text.translate(MARKDOWN)
