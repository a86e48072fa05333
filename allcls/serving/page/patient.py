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
from allcls.serving.page.words import caveats, named, patient_text

GALLERY = 12  # cells per page of the gallery: the maps are computed for these only
COLUMNS = 6
IN_REPORT = 12  # the cells a report shows, in the gallery's order
Explain = Callable[[Sequence[int]], dict[int, Explanation]]


def show_patient(model: Model, batch: analysis.Batch, explain: Explain, model_name: str, version: str) -> None:
    spec, rows = model.spec, batch.rows
    subjects = sorted({s for s in (cnmc_subject(PurePosixPath(f).name) for f in rows["file"]) if s})
    if len(subjects) > 1:
        st.warning(f"These files name {len(subjects)} C-NMC subjects ({', '.join(subjects)}): a patient's decision "
                   "should come from one patient's cells. Upload one subject's files at a time.")
    decision = analysis.patient(model, rows)
    referred, sentence = patient_text(decision, spec)
    if referred:
        st.header("Patient: refer to a human")
        st.warning(sentence)
    else:
        st.header(f"Patient: {named(spec, str(decision['label']))}")
        notes = caveats(decision, spec)
        (st.info if notes else st.success)(sentence + (" But: " + "; ".join(notes) + "." if notes else ""))
    order = analysis.attention_order(model.spec, rows)
    pages = max(1, -(-len(order) // GALLERY))
    start = 0
    if pages > 1:
        start = GALLERY * st.selectbox("Cells shown", range(pages), format_func=lambda p: (
            f"{p * GALLERY + 1}-{min((p + 1) * GALLERY, len(order))} of {len(order)}"))
    shown = order[start:start + GALLERY]
    maps = explain(shown)
    st.subheader("Cells, referred and most suspicious first")
    st.caption("Each with its class, its prediction set and where the model looked; \"Look closer\" opens a cell.")
    for first in range(0, len(shown), COLUMNS):
        for column, index in zip(st.columns(COLUMNS), shown[first:first + COLUMNS], strict=False):
            gallery_cell(column, model, batch, index, maps.get(index))
    chosen = st.session_state.get("detail")
    if chosen is not None and chosen < len(rows):
        st.divider()
        explanation = maps.get(chosen) or explain([chosen]).get(chosen)
        show_cell(model, rows.iloc[chosen], batch.images[chosen], explanation, batch.agreement[chosen])
    st.divider()
    in_report = order[:IN_REPORT]
    report_maps = {**maps, **explain([i for i in in_report if i not in maps])}
    cells = [ReportCell(rows.iloc[i], picture(batch, i, report_maps.get(i))) for i in in_report]
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


def gallery_cell(column, model: Model, batch: analysis.Batch, index: int, explanation: Explanation | None) -> None:
    row: pd.Series = batch.rows.iloc[index]
    shown = picture(batch, index, explanation)
    if shown is None:
        column.error(f"{PurePosixPath(str(row['file'])).name}: unreadable")
        return
    column.image(shown, width="stretch")
    label = str(row["label"])
    what = "REFER" if bool(row["refer"]) else label
    column.markdown(f"**{what}** {float(row[f'prob_{label}']):.0%} {label}  \nset: {row['set'] or 'empty'}")
    column.caption(PurePosixPath(str(row["file"])).name)
    if column.button("Look closer", key=f"look-{index}"):
        st.session_state["detail"] = index
