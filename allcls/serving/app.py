"""The diagnosis page: pick a registered model, then give it a patient's cells (several files, or a
folder as a zip) for the patient's decision first and their cells in the order they deserve a look,
or single cells, each with its class and probability or "refer to a human" with the reasons
(allcls.inference.decision), its prediction set, a readable Grad-CAM and, for an ensemble, each
member's vote. Every answer is recorded in the MLflow store (allcls.tracking.audit).

    allcls-app              # or `make app`; serves http://127.0.0.1:8501
    allcls-app --server.port 8600 --server.address 0.0.0.0

It reads the same MLflow store as everything else: $MLFLOW_TRACKING_URI, else mlruns/ in the folder
it is started from. A model is loaded once per server process and shared by every browser session;
a batch is decoded and answered at once, and maps are computed only for the cells on show. A
research tool, not a diagnostic device: the page says so.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import pandas as pd
import streamlit as st

from allcls.config.stage import default_tracking_uri
from allcls.inference.explanation import Explanation
from allcls.inference.model import Model
from allcls.serving.model_card import NOTICE
from allcls.serving.page import analysis
from allcls.serving.page.cells import show_cell
from allcls.serving.page.patient import SHOWN, pages, show_patient
from allcls.serving.page.sidebar import Choice, choose_model, describe, store
from allcls.serving.page.words import plain
from allcls.tracking import audit, registry

PATIENT, CELLS = "A patient (several cells)", "Single cells"
UPLOAD_TYPES = [*analysis.IMAGE_TYPES, "zip"]
KEPT_SECONDS = 1800  # how long a set of uploads' answers and maps are kept for the page's reruns


@st.cache_resource(show_spinner=False)
def torch_thread() -> ThreadPoolExecutor:
    """The one thread that runs the models for every session. Streamlit runs each rerun of the page
    on a new thread, and OpenMP gives every thread that runs torch a team of threads of its own: a
    new team for every click. One thread, one team, reused (one image with its map: 1.5 s -> 1.2 s
    on two cores, benchmarks/page.py; allcls-app also lets idle OpenMP threads sleep)."""
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="allcls-torch")


def on_torch_thread(function, *args):
    return torch_thread().submit(function, *args).result()


@st.cache_resource(show_spinner="Loading the model...", max_entries=4)
def cached_model(model_uri: str, uri: str) -> Model:
    """One model per registered version (`model_uri` names the version) and server process."""
    return on_torch_thread(lambda: registry.load(store(uri), model_uri, explain=True).model)


# Resources, not data: the answers and maps are read, never changed, by the page; Streamlit's data
# cache would copy a batch's decoded images out of it on every click.
@st.cache_resource(show_spinner="Reading the cells...", max_entries=16, ttl=KEPT_SECONDS)
def cached_batch(_model: Model, model_uri: str, key: tuple[str, ...], _uploads: list[analysis.Upload],
                 tta: bool) -> analysis.Batch:
    """The answers for a set of uploads (`key`: their names and hashes), shared by the page's reruns."""
    return on_torch_thread(analysis.analyse, _model, _uploads, tta)


@st.cache_resource(show_spinner="Drawing where the model looked...", max_entries=64, ttl=KEPT_SECONDS)
def cached_maps(_model: Model, _batch: analysis.Batch, model_uri: str, key: tuple[str, ...], tta: bool,
                indices: tuple[int, ...]) -> dict[int, Explanation]:
    return on_torch_thread(analysis.explanations, _model, _batch, indices)


def page() -> None:
    st.set_page_config(page_title="allcls: ALL cell classifier", layout="wide")
    st.title("Acute Lymphoblastic Leukemia: cell classifier")
    st.warning(NOTICE.replace("**", ""))
    uri = default_tracking_uri()
    audit.use_store(uri)
    choice = choose_model(uri)
    if choice is None:
        return
    model = load_model(choice, uri)
    if model is None:
        return
    describe(model, choice, uri)
    mode = st.radio("What to look at", [PATIENT, CELLS], horizontal=True)
    files = st.file_uploader("Cell images (png, jpg, bmp, tif), or a folder as a zip", type=UPLOAD_TYPES,
                             accept_multiple_files=True)
    tta = st.checkbox("Test-time augmentation: average six flipped and rotated views", value=False)
    gradcam = st.checkbox("Grad-CAM: where the model looked", value=True)
    started = time.time_ns()
    uploads, problems = expanded(files or [])
    for problem in problems:
        st.error(plain(problem))
    if not uploads:
        return
    key = tuple(f"{u.name}:{u.digest}" for u in uploads)
    batch = cached_batch(model, choice.uri, key, uploads, tta)

    def explain(indices: Sequence[int]) -> dict[int, Explanation]:
        if not gradcam or not indices:
            return {}
        if model.explainer is None:  # answering with ONNX Runtime on a server without torch
            st.info("Where the model looked (Grad-CAM) needs the networks' gradients, which need torch: this "
                    "server answers with ONNX Runtime and has no torch installed. Install torch to see the maps.")
            return {}
        return cached_maps(model, batch, choice.uri, key, tta, tuple(indices))

    decision = analysis.patient(model, batch.rows) if mode == PATIENT else None
    remember(uri, choice, (choice.uri, tta, mode, key), batch, decision, started)
    if decision is not None:
        show_patient(model, batch, decision, explain, choice.name, choice.said)
    else:
        show_cells(model, batch, explain)


def expanded(files: list) -> tuple[list[analysis.Upload], list[str]]:
    """The uploads as images, each archive unpacked once per browser session (not on every click)."""
    known = st.session_state.setdefault("unpacked", {})
    ids = tuple(f.file_id for f in files)
    if ids not in known:
        known.clear()
        known[ids] = analysis.expand([analysis.Upload(f.name, f.getvalue()) for f in files])
    return known[ids]


def remember(uri: str, choice: Choice, key: tuple, batch: analysis.Batch, decision: pd.Series | None,
             started: int) -> None:
    """Record the answers once per browser session and set of uploads (a rerun of the page shows the
    same answers again, it does not give new ones), the patient's decision with them."""
    recorded = st.session_state.setdefault("recorded", set())
    if key in recorded:
        return
    recorded.add(key)
    rows = batch.rows.assign(level="cell")
    if decision is not None:
        rows = pd.concat([rows, decision.to_frame().T.assign(level="patient", file="")], ignore_index=True)
    lookup = functools.partial(audit.registered_version, store(uri), choice.name, choice.version)
    # Answers computed for another session (the same files, the same model) are shown again, not
    # given anew: the record says so, its latency being that of the reuse.
    audit.record(lookup, "page", batch.digests, rows, started, reused=batch.made_ns < started)


def show_cells(model: Model, batch: analysis.Batch, explain) -> None:
    """Single cells: the table of all first, in the order they deserve a look, then each cell's section
    (a page of them at a time: the maps are computed for those only)."""
    order = analysis.attention_order(model.spec, batch.rows)
    table = batch.rows.iloc[order].reset_index(drop=True)
    st.subheader("All images, referred and most suspicious first")
    st.dataframe(table, hide_index=True)
    st.download_button("Download the results (CSV)", table.to_csv(index=False).encode(), "predictions.csv",
                       "text/csv")
    shown = pages(order, "Images shown")
    maps = explain(shown)
    for index in shown:
        show_cell(model, batch.rows.iloc[index], batch.images[index], maps.get(index), batch.agreement[index])
    if len(shown) < len(order):
        st.caption(f"{len(shown)} of {len(order)} images shown ({SHOWN} at a time): pick others above.")


def load_model(choice: Choice, uri: str) -> Model | None:
    try:
        return cached_model(choice.uri, uri)
    except registry.ModelUnavailable as error:
        st.error(f"The model {choice.uri} cannot be loaded ({error.reason}). It may have been deleted or moved: pick "
                 "another one.")
        return None


if __name__ == "__main__":  # streamlit runs this file as its script (`allcls-app` starts it)
    page()
