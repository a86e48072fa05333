"""The C-NMC winner's neighbourhood correction: an opt-in, transductive step of evaluation, named so
wherever its numbers go; it helps where neighbours share a subject, and refuses a batch too small."""

import numpy as np
import pytest

from allcls.config.sections import typed
from allcls.errors import AllclsError
from allcls.evaluation.transductive import NeighbourCorrection, neighbour_correction
from allcls.metrics.vectorised import table_scores
from allcls.predictions import read_table

from helpers import artifacts, compose_config


def subject_batch(subjects=20, cells=10, wrong=0.3, seed=0):
    """Cells whose features cluster by subject (a subject's stain and shape), every subject of one
    class, and predictions that get `wrong` of the cells wrong at random."""
    rng = np.random.default_rng(seed)
    subject_class = rng.integers(0, 2, subjects)
    centres = rng.normal(0, 1, (subjects, 16))
    labels = np.repeat(subject_class, cells)
    features = np.repeat(centres, cells, axis=0) + rng.normal(0, 0.3, (subjects * cells, 16))
    confident = rng.uniform(0.6, 0.9, len(labels))
    predicted = np.where(rng.uniform(size=len(labels)) < wrong, 1 - labels, labels)
    probabilities = np.where(predicted[:, None] == np.arange(2), confident[:, None], 1 - confident[:, None])
    return probabilities, labels, features


@pytest.mark.parametrize("weighting", ["similarity", "uniform"])
def test_neighbours_that_share_a_subject_correct_the_odd_cell_out(weighting):
    probabilities, labels, features = subject_batch()
    settings = NeighbourCorrection(enabled=True, neighbours=9, weighting=weighting, self_weight=0.2)
    corrected = neighbour_correction(probabilities, [features], settings)
    before = (probabilities.argmax(axis=1) == labels).mean()
    after = (corrected.argmax(axis=1) == labels).mean()
    assert before == pytest.approx(0.7, abs=0.06) and after > before + 0.15
    assert np.allclose(corrected.sum(axis=1), 1)


def test_on_synthetic_cells_neighbours_by_stain_are_the_same_subjects_and_correct_the_odd_cell_out(tmp_path):
    """Synthetic C-NMC cells whose subjects differ in stain: described by their colour alone, a
    cell's nearest neighbours are its subject's cells, and their vote fixes scattered mistakes."""
    from allcls.data.images import read_image
    from allcls.data.readers import CNMCReader
    from allcls.data.synthetic import SyntheticSpec, materialise

    root = materialise(SyntheticSpec(image_size=32, cells_per_subject=10, stain_spread=6.0), tmp_path)
    samples = CNMCReader(root, include_prelim_test=False).read()
    images = [read_image(s.path).reshape(-1, 3).astype(float) for s in samples]
    stain = np.array([np.concatenate([pixels[pixels.max(axis=1) > 10].mean(axis=0),
                                      pixels[pixels.max(axis=1) > 10].std(axis=0)]) for pixels in images])
    stain = (stain - stain.mean(axis=0)) / stain.std(axis=0)
    labels = np.array([s.label == "all" for s in samples], dtype=int)
    rng = np.random.default_rng(0)
    predicted = np.where(rng.uniform(size=len(labels)) < 0.25, 1 - labels, labels)  # a quarter wrong, at random
    probabilities = np.where(predicted[:, None] == np.arange(2), 0.8, 0.2)
    corrected = neighbour_correction(probabilities, [stain], NeighbourCorrection(True, 7, "uniform", 0.2))
    before = (predicted == labels).mean()
    assert (corrected.argmax(axis=1) == labels).mean() > before + 0.1


def test_members_features_are_compared_each_in_its_own_space():
    probabilities, labels, features = subject_batch()
    noise = np.random.default_rng(1).normal(0, 1, features.shape)  # a member whose features know no subject
    settings = NeighbourCorrection(enabled=True, neighbours=5, self_weight=0.3)
    informative = neighbour_correction(probabilities, [features, noise], settings, [0.9, 0.1])
    uninformative = neighbour_correction(probabilities, [features, noise], settings, [0.1, 0.9])
    accuracy = [(p.argmax(axis=1) == labels).mean() for p in (informative, uninformative)]
    assert accuracy[0] > accuracy[1]


def test_a_batch_too_small_to_have_neighbours_is_refused():
    probabilities, _, features = subject_batch(subjects=1, cells=5)
    with pytest.raises(AllclsError, match="needs more than 10 images.*it has 5"):
        neighbour_correction(probabilities, [features], NeighbourCorrection(enabled=True, neighbours=10))


@pytest.mark.parametrize("section, message", [({"neighbours": 0}, "must be 1 or more"),
                                              ({"weighting": "gaussian"}, "is not one of"),
                                              ({"neighbors": 5}, "did you mean transductive_correction.neighbours")])
def test_bad_settings_are_refused(section, message):
    with pytest.raises(AllclsError, match=message):
        typed(NeighbourCorrection, section, "transductive_correction")


def test_evaluation_reports_it_apart_and_labelled_transductive(store, tmp_path):
    """With every other cell of the split as an equal neighbour, a cell's corrected probabilities follow
    from the plain table alone: checked cell by cell, by sample id, with the metrics of that table."""
    client = store["client"]
    others = int(client.get_run(store["members"][0]).data.params["n_test"]) - 1
    overrides = [f"run_id={store['members'][0]}", "bootstrap=50", "num_workers=0", "ood.enabled=false",
                 "transductive_correction.enabled=true", f"transductive_correction.neighbours={others}",
                 "transductive_correction.weighting=uniform", "transductive_correction.self_weight=0.5"]
    from allcls.evaluation.task import evaluate

    evaluate(compose_config("evaluate", store["root"], overrides, output_dir=tmp_path / "eval"))
    run = client.search_runs([store["experiment_id"]], "tags.stage = 'evaluate'",
                             order_by=["attributes.start_time DESC"])[0]
    assert run.info.run_name.endswith("-transductive")
    assert run.data.tags["transductive"].startswith(f"neighbour correction (k={others}, uniform")
    assert "test/transductive/f1_weighted" in run.data.metrics and "test/f1_weighted" in run.data.metrics
    assert "predictions/test_transductive.parquet" in artifacts(client, run.info.run_id)
    plain, corrected = (read_table(client.download_artifacts(run.info.run_id, f"predictions/{name}.parquet",
                                                             str(tmp_path))).set_index("sample_id")
                        for name in ("test", "test_transductive"))
    # The store's models tell their cells apart by little, but each cell has probabilities of its own.
    assert plain["prob_all"].nunique() == len(plain) == others + 1
    columns = ["prob_hem", "prob_all"]
    own = plain.loc[corrected.index, columns].to_numpy()
    expected = 0.5 * own + 0.5 * (plain[columns].to_numpy().sum(axis=0) - own) / others
    assert corrected[columns].to_numpy() == pytest.approx(expected, abs=1e-12)
    assert corrected["label"].tolist() == plain.loc[corrected.index, "label"].tolist()
    scores = table_scores(corrected[columns].to_numpy(), corrected["label"].to_numpy(), ["hem", "all"],
                          "test/transductive/")
    assert {name: run.data.metrics[name] for name in scores} == pytest.approx(scores, abs=1e-9)


def test_evaluation_refuses_it_on_a_split_too_small_and_logs_nothing(store, tmp_path):
    from allcls.evaluation.task import evaluate

    client = store["client"]
    before = len(client.search_runs([store["experiment_id"]], "tags.stage = 'evaluate'"))
    overrides = [f"run_id={store['members'][0]}", "num_workers=0", "ood.enabled=false",
                 "transductive_correction.enabled=true",
                 "transductive_correction.neighbours=500"]
    with pytest.raises(AllclsError, match="needs more than 500 images"):
        evaluate(compose_config("evaluate", store["root"], overrides, output_dir=tmp_path / "eval"))
    assert len(client.search_runs([store["experiment_id"]], "tags.stage = 'evaluate'")) == before
