"""The sidebar: which registered model and version answers, and what that model is (its classes in
words, what it was trained and tested on, its referral rule, its test scores, its members)."""

from __future__ import annotations

from dataclasses import dataclass

import streamlit as st

from allcls.errors import AllclsError
from allcls.inference.model import Model
from allcls.serving.provenance import about_of, trained_on_sentence
from allcls.tracking import registry
from allcls.tracking.store import server_unreachable
from allcls.tracking.tracker import Tracker

PREFERRED_MODEL = "begum2025"  # the study whose model the page serves by default, where one is registered
LISTING_SECONDS = 30  # how long the list of registered models is reused before the store is asked again


@dataclass(frozen=True)
class Choice:
    name: str
    version: str
    label: str  # "@champion" or "version 3"

    @property
    def uri(self) -> str:
        """The version itself, also when chosen by its alias: what is loaded, cached and recorded is
        the version the alias named when the list was read (every LISTING_SECONDS)."""
        return f"models:/{self.name}/{self.version}"

    @property
    def said(self) -> str:
        """e.g. "3 (@champion)"."""
        return f"{self.version} ({self.label})" if self.label.startswith("@") else self.version


@st.cache_resource(show_spinner=False)
def store(uri: str) -> Tracker:
    """The page's MLflow store, opened once per server process."""
    return Tracker(uri)


@st.cache_data(show_spinner=False, ttl=LISTING_SECONDS)
def registered(uri: str) -> list[registry.RegisteredModel]:
    """The store's registered models, shared by every browser session for a few seconds."""
    if (reason := server_unreachable(uri)) is not None:
        raise AllclsError(reason)
    return registry.registered_models(store(uri))


@st.cache_data(show_spinner=False, ttl=LISTING_SECONDS)
def card(uri: str, name: str, version: str) -> str:
    return registry.version_card(store(uri), name, version)


def choose_model(uri: str) -> Choice | None:
    try:
        models = registered(uri)
    except AllclsError as error:
        st.error(f"Cannot reach the MLflow store {uri}: {error}. Start the page from the folder that holds mlruns/, "
                 "or set MLFLOW_TRACKING_URI.")
        return None
    if not models:
        st.info(f"No registered model in {uri} yet. Package and register one: `allcls-package "
                "run_id=<run> register_as=<name> alias=champion` (`make demo` registers demo-ensemble).")
        return None
    names = [m.name for m in models]
    default = names.index(PREFERRED_MODEL) if PREFERRED_MODEL in names else 0
    name = st.sidebar.selectbox("Model", names, index=default)
    model = next(m for m in models if m.name == name)
    labels = [f"@{a}" for a in sorted(model.aliases)] + [f"version {v}" for v in model.versions]
    label = st.sidebar.selectbox("Version", labels)
    version = model.aliases[label[1:]] if label.startswith("@") else label.removeprefix("version ")
    return Choice(name, str(version), label)


def describe(model: Model, choice: Choice, uri: str) -> None:
    spec = model.spec
    source, rule = spec.source, spec.decision
    about = about_of(spec)
    if about.get("synthetic"):
        st.sidebar.error("This model was trained on SYNTHETIC cells: its answers on real cells mean nothing.")
    meanings = about.get("class_meaning", {})
    classes = "  \n".join(f"**{c}**: {meanings[c]}" if c in meanings else f"**{c}**" for c in spec.classes)
    st.sidebar.markdown(f"**Classes**  \n{classes}")
    st.sidebar.caption(trained_on_sentence(about, source.get("dataset", "")))
    backbones = sorted({m.backbone for m in spec.members if m.backbone})
    st.sidebar.markdown(f"**Dataset** {source.get('dataset', '?')}  \n"
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
    # Markdown, not a dataframe: the table widget's script is the heaviest thing a new session loads
    st.sidebar.markdown("**Members** (weight)  \n" + "  \n".join(f"{m.name} ({m.weight:.3f})" for m in spec.members))
    with st.expander(f"What this model is: {choice.name} {choice.label} (model card: test scores with intervals, "
                     "calibration, referral, limits)"):
        st.markdown(card(uri, choice.name, choice.version) or "This version has no model card.")
