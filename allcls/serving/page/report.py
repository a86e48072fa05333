"""A patient's report, the page a person files: the decision, the model version that made it and its
card's headline figures, the cells that drove it (with their maps), and the notice. One HTML file
with its pictures inside: it opens anywhere, prints to PDF from any browser, and needs no library."""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone

import cv2
import numpy as np
import pandas as pd

from allcls.inference.spec import ModelSpec
from allcls.serving.model_card import NOTICE
from allcls.serving.page.words import caveats, named, patient_caveats, patient_text, referral_text
from allcls.serving.provenance import about_of, trained_on_sentence


@dataclass(frozen=True)
class ReportCell:
    row: pd.Series  # the cell's row, with `file`
    picture: np.ndarray | None  # RGB: the cell with its map, or as uploaded


def png_data_url(image: np.ndarray) -> str:
    ok, encoded = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    return "data:image/png;base64," + base64.b64encode(encoded.tobytes()).decode() if ok else ""


def patient_report(spec: ModelSpec, model: str, version: str, patient: pd.Series, cells: Sequence[ReportCell],
                   total: int, when: datetime | None = None) -> str:
    """The report as one HTML document (`model`: the registered name, `version`: e.g. "3 (@champion)";
    `cells`: the ones to look at first, of `total`)."""
    when = when or datetime.now(timezone.utc)
    esc = html.escape
    referred, sentence = patient_text(patient, spec)
    unclear = [] if referred else patient_caveats(patient, spec)
    sentence += (" But: " + "; ".join(unclear) + ".") if unclear else ""
    about = about_of(spec)
    headline = "Refer this patient to a human" if referred else f"Call: {esc(named(spec, str(patient['label'])))}"
    scores = "".join(f"<li>{esc(name.replace('_', ' '))}: {value:.3f} [{low:.3f}, {high:.3f}]</li>"
                     for name, (value, low, high) in spec.test_scores.items())
    meanings = "".join(f"<li><b>{esc(c)}</b>: {esc(m)}</li>" for c, m in about.get("class_meaning", {}).items())
    rows = []
    for cell in cells:
        row = cell.row
        _, said = referral_text(row, spec)
        notes = "; ".join(caveats(row, spec)) if not bool(row["refer"]) else ""
        picture = f'<img src="{png_data_url(cell.picture)}" width="160">' if cell.picture is not None else ""
        reading = "" if pd.isna(row["label"]) else f"{esc(str(row['label']))} {float(row[f'prob_{row.label}']):.0%}"
        answer = f"refer<br><small>(reading {reading}: not an answer)</small>" if bool(row["refer"]) and reading \
            else ("refer" if bool(row["refer"]) else reading)
        rows.append(f"<tr><td>{picture}</td><td>{esc(str(row['file']))}</td><td>{answer}</td>"
                    f"<td>{esc(str(row['set']) if isinstance(row['set'], str) else '')}</td>"
                    f"<td>{esc(said)}{'<br><i>' + esc(notes) + '</i>' if notes else ''}</td></tr>")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>allcls report: {esc(model)} version {esc(version)}</title>
<style>body{{font-family:sans-serif;max-width:60em;margin:2em auto}} td,th{{border-bottom:1px solid #ccc;
padding:4px;vertical-align:top;text-align:left}} table{{border-collapse:collapse}} .notice{{background:#fff3cd;
padding:8px}} .refer{{color:#8a4b00}}</style></head><body>
<h1>Patient report</h1>
<p class="notice">{esc(NOTICE.replace('**', ''))}</p>
<h2 class="{'refer' if referred else ''}">{headline}</h2>
<p>{esc(sentence)}</p>
<h2>Model</h2>
<p>{esc(model)} version {esc(version)}; report made {when:%Y-%m-%d %H:%M} UTC.
{esc(trained_on_sentence(about, spec.source.get('dataset', '')))}</p>
<ul>{meanings}</ul>
<p>On its test split (95% intervals over subjects):</p><ul>{scores}</ul>
<h2>The cells to look at first</h2>
<p>{len(cells)} of {total} cells, referred and most suspicious first; the call is the mean over the cells in
distribution.</p>
<table><tr><th></th><th>file</th><th>class</th><th>set</th><th>why</th></tr>
{''.join(rows)}
</table></body></html>
"""
