"""The diagnosis page: pick a registered model, upload cell images, see for each the predicted class
and its probability, or "refer to a human" with the reasons (allcls.inference.decision), the
prediction set, the Grad-CAM overlay and, for an ensemble, each member's vote.

    allcls-app              # or `make app`; serves http://127.0.0.1:8501
    allcls-app --server.port 8600 --server.address 0.0.0.0

It reads the same MLflow store as everything else: $MLFLOW_TRACKING_URI, else mlruns/ in the folder
it is started from. A research tool, not a diagnostic device: the page says so.
"""

from __future__ import annotations

from dataclasses import dataclass

import altair as alt
import numpy as np
import pandas as pd
import streamlit as st

from allcls.config.stage import default_tracking_uri
from allcls.data.images import ImageReadError
from allcls.errors import AllclsError
from allcls.inference.combining import combine
from allcls.inference.decision import AMBIGUOUS, REASONS, UNCERTAIN
from allcls.inference.decoding import decode_limited
from allcls.inference.gradcam import combine_maps, member_maps, overlay
from allcls.inference.model import Model
from allcls.inference.views import views_for
from allcls.serving.model_card import NOTICE
from allcls.tracking import registry
from allcls.tracking.store import server_unreachable
from allcls.tracking.tracker import Tracker

UPLOAD_TYPES = ["png", "jpg", "jpeg", "bmp", "tif", "tiff"]
PREFERRED_MODEL = "begum2025"  # the study whose model the page serves by default, where one is registered


@dataclass(frozen=True)
class Choice:
    name: str
    version: str
    label: str  # "@champion" or "version 3"

    @property
    def uri(self) -> str:
        return f"models:/{self.name}@{self.label[1:]}" if self.label.startswith("@") else \
            f"models:/{self.name}/{self.version}"


@dataclass(frozen=True)
class Analysis:
    """What the page shows for one image (allcls.inference.model's row, and what it came from)."""

    label: str  # the model's reading; the answer only where `refer` is false
    probabilities: np.ndarray  # per class, as ModelSpec.probability_name says
    members: list[bool]  # the prediction set
    refer: bool
    reasons: list[str]  # allcls.inference.decision's reasons, most fundamental first
    ood_score: float | None
    votes: dict[str, str]  # member -> its label (an ensemble)
    agreement: tuple[int, int] | None  # TTA views agreeing with the label, of all views
    overlay: np.ndarray | None  # the weighted Grad-CAM over the image
    member_overlays: dict[str, np.ndarray]


def analyse(model: Model, image: np.ndarray, tta: bool, gradcam: bool) -> Analysis:
    """One decoded image through a packaged model."""
    predictor, spec = model.predictor, model.spec
    answer = model.answer([image], views_for(tta), show_progress=False)
    per_view = answer.outputs.per_view  # (views, members, 1, classes)
    target = int(answer.decisions.labels[0])
    own = per_view.mean(axis=0)[:, 0]  # each member, averaged over the views
    votes = ({m.name: spec.classes[int(p.argmax())] for m, p in zip(spec.members, own, strict=True)}
             if len(spec.members) > 1 else {})
    agreement = None
    if tta:
        by_view = [int(combine(view, predictor.weights, predictor.rule)[0].argmax()) for view in per_view]
        agreement = (sum(k == target for k in by_view), len(by_view))
    shown, per_member = None, {}
    if gradcam:
        display, maps = member_maps(predictor, [image], [target], show=False)
        shown = overlay(display[0], combine_maps(maps, predictor.weights, display.shape[1])[0])
        if len(spec.members) > 1:
            per_member = {m.name: overlay(display[0], combine_maps([member], [1.0], display.shape[1])[0])
                          for m, member in zip(spec.members, maps, strict=True)}
    reasons = [r for r in answer.decisions.reasons[0].split("; ") if r]
    return Analysis(spec.classes[target], answer.probabilities[0], answer.decisions.members[0].tolist(),
                    bool(answer.decisions.refer[0]), reasons,
                    float(answer.ood[0]) if answer.ood is not None else None, votes, agreement, shown, per_member)


def referral_text(analysis: Analysis, classes: list[str], coverage: float | None) -> tuple[bool, str]:
    """(refer?, plain sentences saying why, or what the answer rests on)."""
    inside = [c for c, member in zip(classes, analysis.members, strict=True) if member]
    if analysis.refer:
        why = []
        for reason in analysis.reasons:
            if reason == AMBIGUOUS and len(inside) > 1:
                why.append(f"at {coverage:.0%} coverage the model has to keep {' or '.join(inside)} open for this "
                           "image; it cannot tell them apart here" if coverage else REASONS[reason])
            elif reason == UNCERTAIN and coverage:
                why.append(f"no class is as probable as {coverage:.0%} of that class's validation cells were")
            else:
                why.append(REASONS[reason])
        return True, "Refer to a human: " + "; ".join(why) + "."
    if coverage is None:
        return False, "This model has no prediction sets (its validation split was too small to fit them)."
    return False, (f"The prediction set is {inside[0]} alone: at {coverage:.0%} coverage the model excludes the "
                   "other classes for this image.")


# --- the page -------------------------------------------------------------------------------------

def page() -> None:
    st.set_page_config(page_title="allcls: ALL cell classifier", layout="wide")
    st.title("Acute Lymphoblastic Leukemia: cell classifier")
    st.warning(NOTICE.replace("**", ""))
    choice = choose_model()
    if choice is None:
        return
    model = load_model(choice.uri)
    if model is None:
        return
    describe(model, choice)
    uploads = st.file_uploader("Cell images (png, jpg, bmp, tif)", type=UPLOAD_TYPES, accept_multiple_files=True)
    tta = st.checkbox("Test-time augmentation: average six flipped and rotated views", value=False)
    gradcam = st.checkbox("Grad-CAM: where the model looked", value=True)
    rows = []
    for upload in uploads or []:
        rows += show_image(model, upload.name, upload.getvalue(), tta, gradcam)
    if rows:
        table = pd.DataFrame(rows)
        st.subheader("All images")
        st.dataframe(table, hide_index=True)
        st.download_button("Download the results (CSV)", table.to_csv(index=False).encode(), "predictions.csv",
                           "text/csv")


def choose_model() -> Choice | None:
    uri = default_tracking_uri()
    try:
        if (reason := server_unreachable(uri)) is not None:
            raise AllclsError(reason)
        registered = registry.registered_models(store(uri))
    except AllclsError as error:
        st.error(f"Cannot reach the MLflow store {uri}: {error}. Start the page from the folder that holds mlruns/, "
                 "or set MLFLOW_TRACKING_URI.")
        return None
    if not registered:
        st.info(f"No registered model in {uri} yet. Package and register one: `allcls-package "
                "run_id=<run> register_as=<name> alias=champion` (`make demo` registers demo-ensemble).")
        return None
    names = [m.name for m in registered]
    default = names.index(PREFERRED_MODEL) if PREFERRED_MODEL in names else 0
    name = st.sidebar.selectbox("Model", names, index=default)
    model = next(m for m in registered if m.name == name)
    labels = [f"@{a}" for a in sorted(model.aliases)] + [f"version {v}" for v in model.versions]
    label = st.sidebar.selectbox("Version", labels)
    version = model.aliases[label[1:]] if label.startswith("@") else label.removeprefix("version ")
    return Choice(name, str(version), label)


@st.cache_resource(show_spinner=False)
def store(uri: str) -> Tracker:
    """The page's MLflow store, opened once per server process."""
    return Tracker(uri)


@st.cache_resource(show_spinner="Loading the model...")
def cached_model(model_uri: str, uri: str) -> Model:
    return registry.load(store(uri), model_uri).model


def load_model(uri: str) -> Model | None:
    try:
        return cached_model(uri, default_tracking_uri())
    except registry.ModelUnavailable as error:
        st.error(f"The model {uri} cannot be loaded ({error.reason}). It may have been deleted or moved: pick another "
                 "one.")
        return None


def describe(model: Model, choice: Choice) -> None:
    spec = model.spec
    source, rule = spec.source, spec.decision
    backbones = sorted({m.backbone for m in spec.members if m.backbone})
    st.sidebar.markdown(f"**Dataset** {source.get('dataset', '?')}  \n**Classes** {', '.join(spec.classes)}  \n"
                        f"**Backbone{'s' if len(backbones) > 1 else ''}** {', '.join(backbones) or '?'}  \n"
                        f"**Temperature** {'none' if spec.temperature is None else f'{spec.temperature:.2f}'}  \n"
                        f"**Referral** {'no sets' if spec.coverage is None else f'{spec.coverage:.0%} coverage'}"
                        + (f", protects {' / '.join(rule.protect.classes)} (miss rate "
                           f"{rule.protect.max_miss_rate:.0%})" if rule.protect is not None else "")
                        + f"  \n**Out-of-distribution gate** {'on' if rule.ood_threshold is not None else 'none'}")
    if spec.test_scores:
        st.sidebar.markdown("**On its test split** (95% intervals over subjects)  \n" + "  \n".join(
            f"{name.replace('_', ' ')} {value:.3f} [{low:.3f}, {high:.3f}]"
            for name, (value, low, high) in spec.test_scores.items()))
    members = pd.DataFrame({"member": [m.name for m in spec.members],
                            "weight": [round(m.weight, 3) for m in spec.members]})
    st.sidebar.dataframe(members, hide_index=True)
    card = registry.version_card(store(default_tracking_uri()), choice.name, choice.version)
    with st.expander(f"What this model is: {choice.name} {choice.label} (model card: test scores with intervals, "
                     "calibration, referral, limits)"):
        st.markdown(card or "This version has no model card.")


def short_name(model: Model) -> str:
    """The probability axis's title: what the numbers are, in three words or so."""
    spec = model.spec
    what = "members' mean probability" if spec.rule == "vote" else "probability"
    return f"calibrated {what}" if spec.temperature is not None else f"{what} (uncalibrated)"


def probability_chart(classes: list[str], probabilities: np.ndarray, title: str) -> alt.Chart:
    """One bar per class in the model's class order, on a fixed 0-100% axis (a half-full bar looks half full)."""
    table = pd.DataFrame({"class": classes, "probability": probabilities})
    return alt.Chart(table).mark_bar().encode(
        x=alt.X("probability:Q", scale=alt.Scale(domain=[0, 1]), axis=alt.Axis(format="%"), title=title),
        y=alt.Y("class:N", sort=classes, title=None, axis=alt.Axis(labelFontSize=14)),
        tooltip=["class", alt.Tooltip("probability:Q", format=".1%")],
    )


def show_image(model: Model, name: str, data: bytes, tta: bool, gradcam: bool) -> list[dict]:
    """One uploaded image's section; its row for the results table (none if it cannot be read)."""
    st.subheader(name)
    try:
        image = decode_limited(data, name)
    except ImageReadError as error:
        st.error(f"{name} cannot be used: {error.reason}.")
        return []
    analysis = analyse(model, image, tta, gradcam)
    classes, coverage = model.spec.classes, model.spec.coverage
    left, middle, right = st.columns([1, 1, 2])
    left.image(image, caption="uploaded", width="stretch")
    if analysis.overlay is not None:
        middle.image(analysis.overlay, caption="Grad-CAM of " + analysis.label, width="stretch")
    probability = float(analysis.probabilities[classes.index(analysis.label)])
    named = model.spec.probability_name
    refer, sentence = referral_text(analysis, classes, coverage)
    if refer:
        right.markdown("### Refer to a human")
        right.warning(sentence)
        right.caption(f"Not an answer: the model's own reading is {analysis.label}, {probability:.1%} ({named}).")
    else:
        right.markdown(f"### Predicted: {analysis.label}  \n{probability:.1%}: {named}")
        right.success(sentence)
    right.altair_chart(probability_chart(classes, analysis.probabilities, short_name(model)), width="stretch",
                       height=44 * len(classes) + 50)
    if analysis.ood_score is not None and model.spec.decision.ood_threshold is not None:
        right.caption(f"Out-of-distribution score {analysis.ood_score:.2f} (above "
                      f"{model.spec.decision.ood_threshold:.2f}: unlike the cells this model was trained on).")
    if analysis.agreement is not None:
        agree, views = analysis.agreement
        right.caption(f"Test-time augmentation: {agree} of {views} views agree on {analysis.label}.")
    if analysis.votes:
        right.markdown("Members' votes: " + ", ".join(f"{m}: **{label}**" for m, label in analysis.votes.items()))
        if analysis.member_overlays:
            with st.expander("Each member's Grad-CAM"):
                columns = st.columns(len(analysis.member_overlays))
                for column, (member, shown) in zip(columns, analysis.member_overlays.items(), strict=True):
                    column.image(shown, caption=member, width="stretch")
    row = {"file": name, "label": analysis.label,
           **{f"prob_{c}": float(p) for c, p in zip(classes, analysis.probabilities, strict=True)},
           "set": "|".join(c for c, inside in zip(classes, analysis.members, strict=True) if inside), "refer": refer,
           "refer_reason": "; ".join(analysis.reasons), "ood_score": analysis.ood_score}
    return [{**row, **{f"member_{m}": label for m, label in analysis.votes.items()}}]


if __name__ == "__main__":  # streamlit runs this file as its script (`allcls-app` starts it)
    page()
