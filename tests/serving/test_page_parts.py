"""The diagnosis page's parts that need no browser: reading a patient's uploads (files and zip
archives), the order in which cells deserve a look, the words a clinician reads, and the report."""

import io
import zipfile
from datetime import datetime, timezone

import numpy as np
import pandas as pd

from allcls.data.preprocessing import InputSpec
from allcls.inference.decision import DecisionRule, ProtectRule, SetRule
from allcls.inference.members import Member, Preprocessing
from allcls.inference.spec import ModelSpec
from allcls.serving.page.analysis import Upload, attention_order, expand
from allcls.serving.page.report import ReportCell, patient_report
from allcls.serving.page.words import caveats, named, patient_caveats, patient_text, plain, referral_text

MEANING = {"hem": "normal B-lymphoid cell", "all": "leukemic B-lymphoblast"}


def spec(protect: bool = True) -> ModelSpec:
    preprocessing = Preprocessing(InputSpec(32, (0.5,) * 3, (0.25,) * 3), True)
    members = [Member("a", 0.5, "custom_cnn", preprocessing), Member("b", 0.5, "custom_cnn", preprocessing)]
    rule = DecisionRule(sets=SetRule("class_conditional", 0.9, [0.1, 0.1]),
                        protect=ProtectRule(["all"], 0.1, 0.2) if protect else None)
    return ModelSpec(["hem", "all"], "arithmetic", members, rule, {"dataset": "cnmc"},
                     {"balanced_accuracy": [0.9, 0.85, 0.95]},
                     {"class_meaning": MEANING, "synthetic": False, "splits": {"train": [100, 10], "val": [30, 3],
                                                                               "test": [40, 4]},
                      "split": "by subject"})


def rows(table: list[tuple]) -> pd.DataFrame:
    """Cell rows: (file, label, prob_all, set, refer, refer_reason, member_a, member_b)."""
    frame = pd.DataFrame(table, columns=["file", "label", "prob_all", "set", "refer", "refer_reason", "member_a",
                                         "member_b"])
    frame.insert(2, "prob_hem", 1 - frame["prob_all"])
    frame["ood_score"] = 0.1
    frame["error"] = ""
    return frame


CELLS = rows([("clear-hem.bmp", "hem", 0.05, "hem", False, "", "hem", "hem"),
              ("unreadable.bmp", None, np.nan, None, True, "unreadable", None, None),
              ("suspicious.bmp", "hem", 0.45, "hem", False, "", "hem", "all"),
              ("referred.bmp", "all", 0.6, "hem|all", True, "ambiguous", "all", "hem"),
              ("clear-all.bmp", "all", 0.97, "all", False, "", "all", "all")])


def zipped(entries: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def test_a_zip_archive_gives_its_images_and_says_what_it_left_out():
    archive = zipped({"patient/a.bmp": b"A", "patient/b.PNG": b"B", "patient/notes.txt": b"n",
                      "__MACOSX/patient/._a.bmp": b"fork", "patient/.hidden.png": b"h"})
    images, problems = expand([Upload("one.bmp", b"1"), Upload("patient.zip", archive),
                               Upload("broken.zip", b"PK\x03\x04 not really"),
                               Upload("empty.zip", zipped({"x.txt": b""}))])
    assert [u.name for u in images] == ["one.bmp", "patient.zip/patient/a.bmp", "patient.zip/patient/b.PNG"]
    assert images[1].data == b"A"
    assert problems[0].startswith("broken.zip cannot be opened as a zip archive")
    assert "zip the folder again" in problems[0]
    assert problems[1] == "empty.zip holds no image (png, jpg, jpeg, bmp, tif, tiff)."


def test_an_archive_is_unpacked_within_limits_on_what_it_really_holds(monkeypatch):
    from allcls.serving.page import analysis

    monkeypatch.setattr(analysis, "MAX_FILE_BYTES", 1000)
    monkeypatch.setattr(analysis, "MAX_ARCHIVE_BYTES", 2500)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("a.bmp", b"\0" * 900)
        archive.writestr("bomb.bmp", b"\0" * 5000)  # a few bytes deflated
        archive.writestr("b.bmp", b"\0" * 900)
        archive.writestr("bzip.bmp", b"\0" * 10, compress_type=zipfile.ZIP_BZIP2)
        archive.writestr("c.bmp", b"\0" * 900)
    images, problems = expand([Upload("cells.zip", buffer.getvalue())])
    assert [u.name for u in images] == ["cells.zip/a.bmp", "cells.zip/b.bmp"]
    assert problems == [
        "cells.zip/bomb.bmp: unpacks to more than 0 MB; left out.",
        "cells.zip/bzip.bmp: compressed with a method other than deflate (zip it again with a common tool); left out.",
        "cells.zip/c.bmp: unpacks to more than 0 MB; left out.",
        "cells.zip unpacks to more than 0 GB of images: the rest of it is left out. Upload fewer cells at a time."]


def test_cells_are_ordered_referred_first_then_most_suspicious_unreadable_last():
    order = [CELLS["file"][i] for i in attention_order(spec(), CELLS)]
    assert order == ["referred.bmp", "clear-all.bmp", "suspicious.bmp", "clear-hem.bmp", "unreadable.bmp"]
    # Without a protected class: the least sure first
    order = [CELLS["file"][i] for i in attention_order(spec(protect=False), CELLS)]
    assert order == ["referred.bmp", "suspicious.bmp", "clear-hem.bmp", "clear-all.bmp", "unreadable.bmp"]


def test_an_answer_with_a_small_margin_or_dissenting_members_says_so():
    model = spec()
    assert caveats(CELLS.iloc[0], model) == []
    assert caveats(CELLS.iloc[2], model) == ["small margin: hem 55% against all 45%",
                                             "the members disagree: 1 of 2 say hem"]
    assert named(model, "all") == "all (leukemic B-lymphoblast)"
    refer, sentence = referral_text(CELLS.iloc[3], model)
    assert refer and sentence == ("Refer to a human: at 90% coverage the model has to keep hem or all open for this "
                                  "image; it cannot tell them apart here.")
    refer, sentence = referral_text(CELLS.iloc[4], model)
    assert not refer and sentence.startswith("The prediction set is all alone")


def patient(refer: bool) -> pd.Series:
    return pd.Series({"patient": "patient", "cells": 5, "cells_used": 4, "cells_referred": 2,
                      "label": "all", "prob_hem": 0.3, "prob_all": 0.7, "set": "hem|all" if refer else "all",
                      "refer": refer, "refer_reason": "ambiguous" if refer else "", "member_a": "all",
                      "member_b": "all"})


def test_a_patients_call_and_referral_are_sentences_with_the_cells_they_rest_on():
    model = spec()
    assert patient_text(patient(False), model) == (
        False, "all (leukemic B-lymphoblast): 70%, the mean over the patient's cells in distribution (4 of 5 cells "
               "used, 2 referred).")
    assert patient_text(patient(True), model) == (
        True, "Refer this patient to a human: more than one class is plausible for this patient at the chosen "
              "coverage (4 of 5 cells used, 2 referred).")


def test_a_patient_called_clear_of_the_protected_class_while_it_is_probable_or_most_cells_referred_is_unclear():
    model = spec()
    clear = patient(False).copy()
    clear.update({"label": "hem", "prob_hem": 0.9, "prob_all": 0.1, "set": "hem", "member_a": "hem",
                  "member_b": "hem"})
    assert patient_caveats(clear, model) == []
    doubtful = clear.copy()
    doubtful.update({"prob_hem": 0.68, "prob_all": 0.32, "cells_referred": 5, "cells": 5})
    assert patient_caveats(doubtful, model) == [
        "5 of 5 cells were referred: look at them first",
        "all at 32% for this patient: a cell that probable would not be cleared (threshold 20%)"]
    four = ModelSpec(["Benign", "Early", "Pre", "Pro"], "arithmetic", model.members[:1])
    row = pd.Series({"label": "Early", "prob_Benign": 0.25, "prob_Early": 0.45, "prob_Pre": 0.15, "prob_Pro": 0.15})
    assert caveats(row, four) == ["no class holds half the probability: Early 45%, Benign 25%"]
    assert caveats(row.replace(0.45, np.nan), four) == ["the model gave no probabilities for this image"]


def test_a_file_name_is_plain_text_on_the_page():
    assert plain("[x](https://evil)_**b**.bmp") == r"\[x\]\(https://evil\)\_\*\*b\*\*.bmp"
    assert plain("![img](http://x/y.png)") == r"\!\[img\]\(http://x/y.png\)"
    assert len(plain("a" * 500)) == 200


def test_the_report_names_the_decision_the_model_version_its_figures_the_cells_and_the_notice():
    picture = np.zeros((40, 40, 3), np.uint8)
    cells = [ReportCell(CELLS.iloc[i], picture if i != 1 else None) for i in (3, 1)]
    report = patient_report(spec(), "demo-ensemble", "6 (@champion)", patient(True), cells, 5,
                            datetime(2026, 12, 7, 9, 30, tzinfo=timezone.utc))
    assert "<title>allcls report: demo-ensemble version 6 (@champion)</title>" in report
    assert "Refer this patient to a human" in report and "Not a diagnostic device" in report
    assert "demo-ensemble version 6 (@champion); report made 2026-12-07 09:30 UTC." in report
    assert "balanced accuracy: 0.900 [0.850, 0.950]" in report
    assert "trained on 100 cells of 10 patients, tuned on 30 cells of 3 patients, tested on 40 cells" in report
    assert "<b>all</b>: leukemic B-lymphoblast" in report
    assert "2 of 5 cells, referred and most suspicious first" in report
    assert "refer<br><small>(reading all 60%: not an answer)</small>" in report
    assert report.count("data:image/png;base64,") == 1 and "referred.bmp" in report and "unreadable.bmp" in report
    assert "<script" not in report.lower()


def test_the_page_command_sets_openmp_before_torch_loads():
    """allcls-app sets OMP_WAIT_POLICY for torch's OpenMP, which reads it once, when torch loads:
    importing the command's module must not load torch already."""
    import subprocess
    import sys

    code = "import sys, allcls.serving.cli; assert 'torch' not in sys.modules, 'torch is imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
