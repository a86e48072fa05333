"""One cell's section: the image as uploaded beside its map, the answer (or the referral and why),
what makes it less than clear, the probability of each class, and for an ensemble the members' votes,
their agreement on where to look, and each member's map one click away."""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from allcls.inference.explanation import Explanation, draw
from allcls.inference.model import Model
from allcls.serving.page.words import caveats, named, plain, referral_text


def short_name(model: Model) -> str:
    """The probability axis's title: what the numbers are, in three words or so."""
    spec = model.spec
    what = "members' mean probability" if spec.rule == "vote" else "probability"
    return f"calibrated {what}" if spec.temperature is not None else f"{what} (uncalibrated)"


def probability_bars(column, classes: list[str], probabilities: np.ndarray, title: str) -> None:
    """One bar per class in the model's class order, each on the same 0-100 % scale (a half-full bar
    looks half full). Streamlit's progress bars, not a chart: a chart's script is the heaviest thing
    a page loads, and a gallery would load it once per cell."""
    column.caption(title)
    for name, probability in zip(classes, probabilities, strict=True):
        column.progress(float(np.clip(probability, 0, 1)), text=f"{name}: {probability:.1%}")


def show_cell(model: Model, row: pd.Series, image: np.ndarray | None, explanation: Explanation | None,
              agreement: tuple[int, int] | None) -> None:
    """The section of one cell (`row`: its row, with `file`)."""
    spec = model.spec
    st.subheader(plain(str(row["file"])))
    if image is None:
        st.error(plain(str(row["error"]), limit=400))
        return
    left, middle, right = st.columns([1, 1, 2])
    left.image(image, caption="as uploaded", width="stretch")
    if explanation is not None:
        middle.image(draw(image, explanation.combined), width="stretch",
                     caption=f"Grad-CAM of {row['label']}: brighter = weighed more; outlined: the region that matters")
    show_answer(right, model, row, agreement)
    classes = spec.classes
    probability_bars(right, classes, np.array([float(row[f"prob_{c}"]) for c in classes]), short_name(model))
    threshold = spec.decision.ood_threshold
    if threshold is not None and not pd.isna(row["ood_score"]):
        right.caption(f"Out-of-distribution score {float(row['ood_score']):.2f} (above {threshold:.2f}: unlike the "
                      "cells this model was trained on).")
    if agreement is not None:
        right.caption(f"Test-time augmentation: {agreement[0]} of {agreement[1]} views agree on {row['label']}.")
    if len(spec.members) > 1:
        votes = {m.name: row[spec.member_column(m)] for m in spec.members}
        right.markdown("Members' votes: " + ", ".join(f"{m}: **{v}**" for m, v in votes.items()))
    if explanation is not None:
        show_looks(right, image, explanation)


def show_answer(column, model: Model, row: pd.Series, agreement: tuple[int, int] | None) -> None:
    """The answer, or the referral and why; an answer that is not clear never in a clear answer's green box."""
    spec = model.spec
    label = str(row["label"])
    probability = float(row[f"prob_{label}"])
    refer, sentence = referral_text(row, spec)
    if refer:
        column.markdown("### Refer to a human")
        column.warning(sentence)
        column.caption(f"Not an answer: the model's own reading is {label}, {probability:.1%} "
                       f"({spec.probability_name}).")
        return
    notes = caveats(row, spec)
    if agreement is not None and agreement[0] < agreement[1]:
        notes.append(f"only {agreement[0]} of {agreement[1]} test-time augmentation views agree")
    column.markdown(f"### Predicted: {named(spec, label)}  \n{probability:.1%}: {spec.probability_name}")
    if notes:
        column.info(sentence + " But: " + "; ".join(notes) + ".")
    else:
        column.success(sentence)


def show_looks(column, image: np.ndarray, explanation: Explanation) -> None:
    """Where the members look, in words (a warning where they disagree), and each one's map."""
    (column.warning if explanation.disagree else column.caption)("Where it looks: " + explanation.agreement())
    if len(explanation.members) > 1:
        with st.expander("Each member's Grad-CAM"):
            columns = st.columns(len(explanation.members))
            for member_column, (member, member_map) in zip(columns, explanation.members.items(), strict=True):
                member_column.image(draw(image, member_map), caption=f"{member}: {explanation.places[member]}",
                                    width="stretch")
