"""A patient at a time: the patient's decision first (call, probability, referral and its reason),
then their cells as a compact gallery in the order they deserve a look (referred and most
suspicious first), each with its class, set and a small map, the detail of any cell one click away,
and the report a person files."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import PurePosixPath

import pandas as pd
import streamlit as st

from allcls.data.readers import cnmc_subject
from allcls.inference.explanation import Explanation, draw, thumbnails
from allcls.inference.model import Model
from allcls.serving.page import analysis
from allcls.serving.page.cells import show_cell
from allcls.serving.page.report import ReportCell, patient_report
from allcls.serving.page.words import caveats, named, patient_caveats, patient_text, plain

SHOWN = 12  # cells per page of the gallery (and of single cells): the maps are computed for these only
COLUMNS = 6
Explain = Callable[[Sequence[int]], dict[int, Explanation]]


def pages(order: list[int], label: str) -> list[int]:
    """The part of `order` on show: all of it, or a page of SHOWN picked with a select box."""
    count = max(1, -(-len(order) // SHOWN))
    if count == 1:
        return order
    start = SHOWN * st.selectbox(label, range(count), format_func=lambda p: (
        f"{p * SHOWN + 1}-{min((p + 1) * SHOWN, len(order))} of {len(order)}"))
    return order[start:start + SHOWN]


def show_patient(model: Model, batch: analysis.Batch, decision: pd.Series, explain: Explain, model_name: str,
                 version: str) -> None:
    spec, rows = model.spec, batch.rows
    subjects = sorted({s for s in (cnmc_subject(PurePosixPath(f).name) for f in rows["file"]) if s})
    if len(subjects) > 1:
        st.warning(f"These files name {len(subjects)} C-NMC subjects ({', '.join(subjects)}): a patient's decision "
                   "should come from one patient's cells. Upload one subject's files at a time.")
    referred, sentence = patient_text(decision, spec)
    notes = [] if referred else patient_caveats(decision, spec)
    if referred:
        st.header("Patient: refer to a human")
        st.warning(sentence)
    else:
        st.header(f"Patient: {named(spec, str(decision['label']))}")
        (st.info if notes else st.success)(sentence + (" But: " + "; ".join(notes) + "." if notes else ""))
    order = analysis.attention_order(spec, rows)
    shown = pages(order, "Cells shown")
    maps = explain(shown)
    st.subheader("Cells, referred and most suspicious first")
    st.caption("Each with its class, its prediction set and where the model looked; \"Look closer\" opens a cell.")
    key = tuple(batch.digests)
    for first in range(0, len(shown), COLUMNS):
        for column, index in zip(st.columns(COLUMNS), shown[first:first + COLUMNS], strict=False):
            if gallery_cell(column, model, batch, index, maps.get(index)):
                st.session_state["detail"] = (key, index)
    detail = st.session_state.get("detail")
    if detail is not None and detail[0] == key:  # a cell of these uploads, not of earlier ones
        chosen = detail[1]
        st.divider()
        explanation = maps.get(chosen) or explain([chosen]).get(chosen)
        show_cell(model, rows.iloc[chosen], batch.images[chosen], explanation, batch.agreement[chosen])
    st.divider()
    first_looks = order[:SHOWN]
    report_maps = {**maps, **explain([i for i in first_looks if i not in maps])}
    cells = [ReportCell(rows.iloc[i], picture(batch, i, report_maps.get(i))) for i in first_looks]
    report = patient_report(spec, model_name, version, decision, cells, len(rows))
    st.download_button("Download the patient's report (HTML)", report.encode(), "allcls-patient-report.html",
                       "text/html")
    with st.expander(f"All {len(rows)} cells as a table"):
        table = rows.iloc[order].reset_index(drop=True)
        st.dataframe(table, hide_index=True)
        st.download_button("Download the cells (CSV)", table.to_csv(index=False).encode(), "cells.csv", "text/csv")


def picture(batch: analysis.Batch, index: int, explanation: Explanation | None):
    image = batch.images[index]
    if image is None:
        return None
    return thumbnails([draw(image, explanation.combined) if explanation is not None else image])[0]


def gallery_cell(column, model: Model, batch: analysis.Batch, index: int, explanation: Explanation | None) -> bool:
    """One cell of the gallery; whether its "Look closer" was clicked."""
    row: pd.Series = batch.rows.iloc[index]
    name = plain(PurePosixPath(str(row["file"])).name)
    shown = picture(batch, index, explanation)
    if shown is None:
        column.error(f"{name}: unreadable")
        return False
    column.image(shown, width="stretch")
    label, probability = str(row["label"]), float(row[f"prob_{row['label']}"])
    if bool(row["refer"]):  # the reason, not the reading, is what a referred cell shows first
        column.markdown(f"**Refer**: {str(row['refer_reason']).replace('; ', ', ')}")
        column.caption(f"reading {label} {probability:.0%}, set: {row['set'] or 'empty'}")
    else:
        unclear = " · unclear" if caveats(row, model.spec) else ""
        column.markdown(f"**{label}** {probability:.0%}{unclear}  \nset: {row['set']}")
    column.caption(name)
    return column.button("Look closer", key=f"look-{index}")
