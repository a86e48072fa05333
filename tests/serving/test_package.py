"""Runs and ensembles as MLflow pyfunc models: packaged into the run, registered with an alias, loaded
back by every kind of URI, served by `mlflow models serve`, with a model card whose numbers are the
logged ones."""

import base64
import hashlib
import json
import os
import shutil
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.models import Model as MLmodel

from allcls.errors import AllclsError
from allcls.inference.calibration import calibrated
from allcls.serving.model_inputs import NO_IMAGE_COLUMN, PATHS_VARIABLE
from allcls.serving.package import package
from allcls.serving.pyfunc_model import SERVER_VARIABLE
from allcls.tracking import registry
from allcls.tracking.tracker import Tracker

from helpers import (
    compose_config,
    free_port,
    models_uris_read_the_store,  # noqa: F401  (autouse: MLflow's store is the session's)
    sample_images,
    served,
)

CLASSES = ["hem", "all"]


def package_cfg(store, tmp_path, *overrides):
    return compose_config("package", store["root"], ["bootstrap=100", "coverage=0.8", *overrides],
                          output_dir=tmp_path / "package")


@pytest.fixture(scope="module")
def packaged(registered) -> str:
    """The first member run, packaged and registered as `cells` with alias `champion` (conftest)."""
    return registered["cells"]


def test_a_run_is_packaged_registered_and_found_by_every_uri(store, packaged, tmp_path):
    assert packaged == "models:/cells@champion"
    client = store["client"]
    version = client.get_model_version_by_alias("cells", "champion")
    assert version.tags["run_id"] == store["members"][0] and version.tags["classes"] == "hem,all"
    assert version.tags["split_hash"] == store["split_hash"]
    assert client.get_run(store["members"][0]).data.tags["registered_model_version"] == f"cells/{version.version}"
    requirements = Path(client.download_artifacts(store["members"][0], "model/requirements.txt", str(tmp_path)))
    assert {"torch", "timm", "mlflow", "allcls"} <= {line.split("==")[0] for line in requirements.read_text().split()}
    images = pd.DataFrame({"path": sample_images(store)})
    answers = [mlflow.pyfunc.load_model(uri).predict(images) for uri in
               (packaged, f"models:/cells/{version.version}", f"runs:/{store['members'][0]}/model")]
    for answer in answers[1:]:
        pd.testing.assert_frame_equal(answer, answers[0])
    first = answers[0]
    assert list(first.columns) == ["label", "prob_hem", "prob_all", "set", "refer", "refer_reason", "ood_score",
                                   "error"]
    assert set(first["label"]) <= set(CLASSES) and np.allclose(first[["prob_hem", "prob_all"]].sum(axis=1), 1)
    assert (first["refer"] == first["refer_reason"].ne("")).all() and first["ood_score"].notna().all()
    single = first["set"].isin(CLASSES)
    assert (first.loc[~single, "refer"]).all()  # an empty or two-class set is always referred

    # what the MLflow UI shows of it: its signature (the columns it reads, the columns it answers
    # with, its one param) and an input example, which it answers
    model = mlflow.pyfunc.load_model(packaged)
    signature = model.metadata.signature
    assert signature.inputs.input_names() == ["image", "path", "subject"]
    assert signature.outputs.input_names() == list(first.columns)
    assert [param.name for param in signature.params.params] == ["tta"]
    example = model.input_example
    assert list(example.columns) == ["image"] and len(example) == 1
    answered = model.predict(example)
    assert answered.loc[0, "error"] == "" and "out of distribution" in answered.loc[0, "refer_reason"]  # a black pixel


def test_the_packaged_model_predicts_what_the_run_logged(store, packaged):
    """Before temperature scaling the model's probabilities are the run's own test predictions."""
    client = store["client"]
    logged = pd.read_parquet(client.download_artifacts(store["members"][0], "predictions/test.parquet",
                                                       str(Path(store["root"]) / "check")))
    model = mlflow.pyfunc.load_model(packaged).unwrap_python_model()
    folder = next(Path(store["root"], "data", "synthetic").glob("cnmc-*"))
    rows = logged.head(5)
    probabilities = model.predictor.predict([str(folder / sid) for sid in rows["sample_id"]])
    assert probabilities == pytest.approx(rows[["prob_hem", "prob_all"]].to_numpy(), abs=1e-5)


def test_the_model_card_reports_the_logged_numbers(store, packaged, tmp_path):
    client = store["client"]
    version = client.get_model_version_by_alias("cells", "champion")
    card = Path(client.download_artifacts(store["members"][0], "model/model_card.md", str(tmp_path))).read_text()
    # the version's description is the card, cut at a section where the registry's column on
    # PostgreSQL would be too small for it, saying where the whole card is
    assert len(version.description) <= 5000 and card.startswith(version.description.split("\n\n*The whole")[0])
    assert len(card) <= 5000 or "The whole card (too long for the registry)" in version.description
    assert "Not a diagnostic device" in card and "by subject" in card and store["split_hash"] in card
    run = client.get_run(store["members"][0])
    f1 = run.data.metrics["test/f1_weighted"]
    line = next(row for row in card.splitlines() if row.startswith("| f1_weighted |"))
    assert float(line.split("|")[2]) == pytest.approx(f1, abs=5e-4)
    assert registry.version_card(Tracker(f"sqlite:///{store['root']}/mlruns/mlflow.db"), "cells",
                                 version.version) == card  # what the page shows: the whole card
    spec = mlflow.pyfunc.load_model(packaged).unwrap_python_model().spec  # what the page shows
    assert spec.test_scores["f1_weighted"][0] == pytest.approx(f1, abs=5e-4)
    assert spec.test_scores["f1_weighted"][1] <= f1 <= spec.test_scores["f1_weighted"][2]
    assert {m.backbone for m in spec.members} == {"custom_cnn"}
    assert "## When the model refers a cell to a human" in card and "class-conditional split-conformal sets" in card
    far = next(row for row in card.splitlines() if row.startswith("| all far probes | far |"))
    assert float(far.split("|")[5].strip(" %")) >= 99  # photographs, documents, noise, flat colour: refused
    assert "## One decision per patient" in card and "| on test patients |" in card
    assert spec.decision.ood_threshold is not None and spec.decision.sets.kind == "class_conditional"
    assert Path(client.download_artifacts(store["members"][0], "model/reliability.png", str(tmp_path))).stat().st_size


def test_bad_images_get_a_reason_and_spoil_no_other_row(store, packaged, tmp_path):
    (tmp_path / "empty.bmp").write_bytes(b"")
    (tmp_path / "notes.png").write_text("not an image")
    model = mlflow.pyfunc.load_model(packaged)
    os.mkfifo(tmp_path / "pipe.bmp")  # opening it to read would wait for a writer forever
    paths = [sample_images(store, 1)[0], str(tmp_path / "empty.bmp"), str(tmp_path / "notes.png"), "/no/such.png",
             "/dev/zero", str(tmp_path / "pipe.bmp")]
    rows = model.predict(pd.DataFrame({"path": paths}))
    assert rows.loc[0, "error"] == "" and rows.loc[0, "label"] in CLASSES
    assert "empty" in rows.loc[1, "error"] and "not an image" in rows.loc[2, "error"]
    assert "No such file" in rows.loc[3, "error"] and rows.loc[1:, "label"].isna().all()
    assert rows.loc[4:, "error"].str.endswith("not a regular file").all()  # refused, not read
    assert rows["refer"].tolist() == [rows.loc[0, "refer"], True, True, True, True, True]
    assert rows.loc[1:, "refer_reason"].eq("unreadable").all() and rows.loc[1:, "ood_score"].isna().all()


def test_a_served_model_reads_files_only_under_the_folder_it_was_allowed(store, packaged, tmp_path, monkeypatch):
    """In the server's process (MLflow's scoring server names its model in the environment) a `path`
    is read only under ALLCLS_READ_PATHS_UNDER, links followed: a link out of it, or to a device,
    is refused without saying whether what it names exists."""
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    cells = sample_images(store, 2)
    shutil.copy(cells[0], allowed / "cell.bmp")
    (allowed / "zero.bmp").symlink_to("/dev/zero")
    (allowed / "elsewhere.bmp").symlink_to(cells[1])
    monkeypatch.setenv(SERVER_VARIABLE, str(tmp_path))
    monkeypatch.setenv(PATHS_VARIABLE, str(allowed))
    named = [allowed / "cell.bmp", allowed / "zero.bmp", allowed / "elsewhere.bmp", cells[1], allowed / "none.bmp",
             allowed / ".." / "secret.bmp"]
    rows = mlflow.pyfunc.load_model(packaged).predict(pd.DataFrame({"path": [str(p) for p in named]}))
    assert rows.loc[0, "error"] == "" and rows.loc[0, "label"] in CLASSES
    for row in (1, 2, 3, 5):
        assert f"not under {allowed}, the only folder" in rows.loc[row, "error"], rows.loc[row, "error"]
    assert "No such file" in rows.loc[4, "error"]
    assert rows.loc[1, "ood_score"] is None and rows.loc[1, "label"] is None  # what JSON writes as null


def test_an_ensemble_packages_its_members_and_reports_their_votes(store, ensemble_run, registered, tmp_path):
    """Packaged without registering, it prints its run's page; packaged again with overwrite=true
    (and registered), it answers with each weighted member's vote. Asked a coverage and a miss rate
    that its validation subjects cannot support, it gets no sets and no protected miss rate, and
    packaging says what each needs."""
    assert registered["unregistered"] == f"runs:/{ensemble_run}/model"
    printed = registered["printed"]
    assert f"#/experiments/{store['experiment_id']}/runs/{ensemble_run}" in printed
    assert "prediction sets: 95% coverage needs 20 validation subjects per class or more; hem has 3, all has 3: " \
           "lower the coverage, or validate on more subjects" in printed
    assert "protected miss rate: none: a miss rate of 5% needs 19 validation subjects of all, there are 3: " \
           "raise referral.max_miss_rate or validate on more subjects" in printed
    rule = mlflow.pyfunc.load_model(registered["unregistered"]).unwrap_python_model().spec.decision
    assert rule.sets is None and rule.protect is None
    client = store["client"]
    rows = mlflow.pyfunc.load_model(registered["ensemble"]).predict(pd.DataFrame({"path": sample_images(store, 2)}))
    votes = [c for c in rows.columns if c.startswith("member_")]
    weighted = json.loads(Path(client.download_artifacts(ensemble_run, "ensemble/members.json",
                                                         str(tmp_path))).read_text())["members"]
    assert len(votes) == sum(m["weight"] > 0 for m in weighted) and rows[votes].isin(CLASSES).all().all()
    assert client.get_model_version_by_alias("ensemble", "champion").tags["run_id"] == ensemble_run


def test_packaging_again_is_refused_unless_asked_and_a_half_run_is_refused(store, packaged, tmp_path):
    with pytest.raises(AllclsError, match="already holds a packaged model.*overwrite=true"):
        package(package_cfg(store, tmp_path, f"run_id={store['members'][0]}"))
    for setting in ("coverage=1.2", "bootstrap=-1"):
        with pytest.raises(AllclsError, match=f"{setting} is out of range"):
            package(package_cfg(store, tmp_path, f"run_id={store['members'][1]}", setting))
    client = store["client"]
    empty = client.create_run(store["experiment_id"], tags={"stage": "train", "classes": "hem,all"})
    with pytest.raises(AllclsError, match="has no config/config.yaml|has no predictions"):
        package(package_cfg(store, tmp_path, f"run_id={empty.info.run_id}"))
    client.delete_run(empty.info.run_id)
    with pytest.raises(AllclsError, match=f"Run {empty.info.run_id} is deleted in sqlite:///.*mlflow runs restore"):
        package(package_cfg(store, tmp_path, f"run_id={empty.info.run_id}"))
    with pytest.raises(AllclsError, match="No MLflow run '0123456789abcdef0123456789abcdef'"):
        package(package_cfg(store, tmp_path, "run_id=0123456789abcdef0123456789abcdef"))


def test_a_registered_version_never_changes_and_an_alias_keeps_its_columns(store, registered, tmp_path):
    """The ensemble was registered with its out-of-distribution gate, then its run packaged again
    without one (overwrite=true, conftest): the run's model/ changed, the registered version did not.
    An alias is not moved to a model with other output columns unless forced, and a reserved alias
    is refused before anything is packaged."""
    client, run_id = store["client"], registered["ensemble_run"]
    registered_spec = mlflow.pyfunc.load_model("models:/ensemble/1").unwrap_python_model().spec
    repackaged_spec = mlflow.pyfunc.load_model(f"runs:/{run_id}/model").unwrap_python_model().spec
    assert registered_spec.decision.ood_threshold is not None and repackaged_spec.decision.ood_threshold is None
    version = client.get_model_version("ensemble", "1")
    assert "/models/m-" in version.source  # a LoggedModel's files, not the run's
    tracker = Tracker(f"sqlite:///{store['root']}/mlruns/mlflow.db")
    assert tracker.has_artifact(run_id, "ensemble/members.json")  # the LoggedModel shadows no folder of the run

    # Each packaging is a LoggedModel, the run's output (the UI's Models column), with the run's test
    # metrics as its own; the registered version is the first one, the second is the run's model/ now.
    outputs = [o.model_id for o in client.get_run(run_id).outputs.model_outputs]
    first, second = sorted((client.get_logged_model(model_id) for model_id in outputs),
                           key=lambda logged: logged.creation_timestamp)
    assert json.loads(first.tags["mlflow.modelVersions"]) == [{"name": "ensemble", "version": 1}]
    assert first.name == "ensemble-model" and first.source_run_id == run_id and str(first.status) == "READY"
    run_metrics = client.get_run(run_id).data.metrics
    for logged in (first, second):
        model_metrics = {m.key: m.value for m in logged.metrics}
        assert model_metrics["test/f1_weighted"] == run_metrics["test/f1_weighted"], model_metrics
        assert set(model_metrics) == {k for k in run_metrics if k.startswith("test/")}
    assert len(client.get_metric_history(run_id, "test/f1_weighted")) == 1  # linked, not logged twice
    assert MLmodel.load(client.download_artifacts(run_id, "model/MLmodel", str(tmp_path))).model_id == second.model_id

    # an ensemble answers with its members' votes too: the alias of a single run's model stays put
    with pytest.raises(AllclsError, match=r"cells@champion is version 1, and this model answers with other columns "
                                          r"\(with member_.*force_alias=true"):
        package(package_cfg(store, tmp_path, f"run_id={run_id}", "overwrite=true", "register_as=cells",
                            "alias=champion"))
    assert [str(v.version) for v in client.search_model_versions("name='cells'")] == ["1"]
    for reserved in ("latest", "v2"):
        with pytest.raises(AllclsError, match=f"alias={reserved}: .*reserved.*Choose another alias"):
            package(package_cfg(store, tmp_path, f"run_id={run_id}", "register_as=fixed", f"alias={reserved}"))


@pytest.mark.slow
def test_mlflow_models_serve_answers_like_the_model_in_process(store, packaged, tmp_path):
    """Served over HTTP, the model answers as in process, and every answer is valid JSON (null where
    a value is missing), with one row per image whatever is wrong with the others: a null, text that
    is not base64, bytes that are not an image, a file path (the server reads no files unless told
    to), a request without an `image` column. Line-wrapped base64 (what `base64` writes) is read."""
    port = free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{store['root']}/mlruns/mlflow.db", "TQDM_DISABLE": "1",
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}  # it starts uvicorn by name
    env.pop(PATHS_VARIABLE, None)
    command = [sys.executable, "-m", "mlflow", "models", "serve", "-m", packaged, "--env-manager", "local",
               "-h", "127.0.0.1", "-p", str(port)]
    paths = sample_images(store, 2)
    encoded = [base64.b64encode(Path(p).read_bytes()).decode() for p in paths] + [photograph()]
    wrapped = base64.encodebytes(Path(paths[0]).read_bytes()).decode()  # 76 characters a line
    hostile = [[wrapped, None], [None, None], ["#not base64#", None], [base64.b64encode(b"text").decode(), None],
               [None, paths[0]]]

    def post(columns: list[str], data: list[list]) -> pd.DataFrame:
        body = json.dumps({"dataframe_split": {"columns": columns, "data": data}}).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", body,
                                         {"Content-Type": "application/json"})
        answer = urllib.request.urlopen(request, timeout=120).read().decode()
        return pd.DataFrame(json.loads(answer, parse_constant=_not_json)["predictions"])

    with served(command, f"http://127.0.0.1:{port}/ping", tmp_path / "serve.log", env=env):
        served_rows = post(["image"], [[e] for e in encoded])
        mixed = post(["image", "path"], [[encoded[0], None], *hostile])
        misnamed = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", json.dumps(
            {"dataframe_split": {"columns": ["img"], "data": [[encoded[0]]]}}).encode(),
            {"Content-Type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(misnamed, timeout=120)
        assert refused.value.code == 400
        answer = json.loads(refused.value.read().decode(), parse_constant=_not_json)
        recorded = recorded_answers(store, served_rows, 2)  # the refused request gave no answer
    assert {t.info.tags["allcls.model"] for t in recorded} == {"cells"} and recorded[0].info.tags["allcls.version"]
    assert "champion" in recorded[0].info.tags["allcls.aliases"].split(",")
    sent = [t.data.spans[0].inputs["sha256"] for t in recorded]
    digest = hashlib.sha256(base64.b64decode(encoded[0])).hexdigest()
    assert sorted(len(s) for s in sent) == [3, 6] and all(digest in s for s in sent)
    assert [r["label"] for r in recorded[0].data.spans[0].outputs["rows"]] == served_rows["label"].tolist()
    assert [r["error"] for r in recorded[1].data.spans[0].outputs["rows"]] == mixed["error"].tolist()
    in_process = mlflow.pyfunc.load_model(packaged).predict(pd.DataFrame({"image": encoded}))
    assert served_rows["label"].tolist() == in_process["label"].tolist()
    assert served_rows["prob_all"].to_numpy() == pytest.approx(in_process["prob_all"].to_numpy(), abs=1e-9)
    assert served_rows["refer_reason"].tolist() == in_process["refer_reason"].tolist()
    assert served_rows.loc[2, "refer"] and "out of distribution" in served_rows.loc[2, "refer_reason"]

    assert len(mixed) == 6 and mixed.loc[:1, "error"].tolist() == ["", ""]
    assert mixed.loc[1, "prob_all"] == pytest.approx(mixed.loc[0, "prob_all"], abs=1e-9)  # wrapped = unwrapped
    assert "no image in this row" in mixed.loc[2, "error"] and "not base64" in mixed.loc[3, "error"]
    assert "not an image file" in mixed.loc[4, "error"]
    assert mixed.loc[5, "error"].startswith("this server reads no files") and paths[0] not in mixed.loc[5, "error"]
    assert mixed.loc[2:, "label"].isna().all() and mixed.loc[2:, "refer"].all()  # null in the JSON
    assert NO_IMAGE_COLUMN in answer["message"] and "Traceback" not in json.dumps(answer)


def recorded_answers(store, answered: pd.DataFrame, count: int, wait: float = 30) -> list:
    """The served model's recorded answers (allcls.tracking.audit) in the store, oldest first, once
    `count` are there (the server writes them from a background queue)."""
    from allcls.tracking import audit
    from allcls.tracking.tracker import Tracker

    deadline = time.time() + wait
    while True:
        traces = audit.answers(Tracker(f"sqlite:///{store['root']}/mlruns/mlflow.db"), store["experiment_id"],
                               "tags.`allcls.surface` = 'serve'")
        if len(traces) >= count or time.time() > deadline:
            return traces[::-1]
        time.sleep(0.5)


def _not_json(constant: str):
    raise AssertionError(f"the server answered {constant}, which is not JSON")


def photograph() -> str:
    """A landscape-sized crop of a real photograph (scikit-image ships it), as PNG bytes in base64."""
    import io

    from PIL import Image
    from skimage import data

    buffer = io.BytesIO()
    Image.fromarray(data.coffee()[100:300, 200:400]).save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def test_a_model_packaged_before_the_restructuring_still_loads(store, packaged, tmp_path):
    """A model packaged by allcls 0.1.0 runs a code file that imports `allcls.packaged_model`: the
    alias keeps it loading, and it answers as a model packaged now does."""
    folder = Path(store["client"].download_artifacts(store["members"][0], "model", str(tmp_path)))
    (folder / "model_code.py").write_text(  # the code file as 0.1.0 wrote it
        "from mlflow.models import set_model\n\nfrom allcls.packaged_model import PackagedModel\n\n"
        "set_model(PackagedModel())\n")
    images = pd.DataFrame({"path": sample_images(store)})
    pd.testing.assert_frame_equal(mlflow.pyfunc.load_model(str(folder)).predict(images),
                                  mlflow.pyfunc.load_model(packaged).predict(images))
    # and its spec as 0.1 wrote it: a temperature and one threshold, read as marginal sets
    spec_file = next(folder.rglob("allcls_model.json"))
    values = json.loads(spec_file.read_text())
    decision = values.pop("decision")
    values.update(format=1, temperature=decision["temperature"], coverage=0.8, threshold=0.45)
    spec_file.write_text(json.dumps(values))
    old = mlflow.pyfunc.load_model(str(folder))
    assert old.unwrap_python_model().spec.decision.sets.thresholds == [0.45, 0.45]
    rows = old.predict(images)
    assert rows.loc[~rows["set"].isin(CLASSES), "refer"].all()
    spec_file.write_text(json.dumps(values)[:200])  # cut short
    with pytest.raises(AllclsError, match="allcls_model.json is damaged .*Package its run again"):
        mlflow.pyfunc.load_model(str(folder))


def test_a_subject_column_adds_one_decision_per_patient(store, registered):
    """Cells of two patients (and one without a subject): their rows, then one row per patient whose
    probability is the mean of its cells in distribution, temperature-scaled as the patient rule says."""
    paths = sample_images(store, 5)
    model = mlflow.pyfunc.load_model(registered["ensemble"])
    rows = model.predict(pd.DataFrame({"path": paths, "subject": ["A", "A", "B", "B", None]}))
    assert rows["level"].tolist() == ["cell"] * 5 + ["patient"] * 2
    patients = rows[rows["level"] == "patient"].set_index("subject")
    assert patients["cells"].tolist() == [2, 2] and set(patients["label"]) <= set(CLASSES)
    assert patients["refer"].isin([True, False]).all()
    rule = model.unwrap_python_model().spec.decision.patient
    cells = rows[rows["level"] == "cell"]
    for subject in ("A", "B"):
        own = cells[(cells["subject"] == subject) & ~cells["refer_reason"].str.contains("out of distribution")]
        if len(own):
            mean = own[["prob_hem", "prob_all"]].to_numpy(dtype=float).mean(axis=0)[None]
            assert patients.loc[subject, "prob_all"] == pytest.approx(calibrated(mean, rule.temperature)[0, 1])
