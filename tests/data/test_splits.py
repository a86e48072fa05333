"""Subject-grouped splits: no subject or duplicate group on two sides, a manifest and its hash."""

import shutil

import pandas as pd
import pytest

from allcls.config.sections import typed
from allcls.data.preparation import prepare_dataset
from allcls.data.readers import ARIAReader, CNMCReader, Sample
from allcls.data.splits import (
    SplitSpec,
    assign_splits,
    build_manifest,
    check_no_leakage,
    group_ids,
    manifest_hash,
    read_manifest,
)
from allcls.errors import AllclsError

CNMC_HINTS = {"fold_0": "train", "fold_1": "train", "fold_2": "val", "prelim_test": "test"}


def split_config(**overrides) -> SplitSpec:
    return SplitSpec(**{"val_fraction": 0.2, "test_fraction": 0.2, **overrides})


def samples(n_subjects=10, per_subject=4, classes=("a", "b")):
    return [Sample(f"/x/{s}_{i}.png", f"{s}_{i}.png", classes[s % len(classes)], f"S{s}")
            for s in range(n_subjects) for i in range(per_subject)]


def test_groups_join_subjects_and_identical_images():
    items = [Sample("/a", "a", "x", "S1"), Sample("/b", "b", "x", "S2"), Sample("/c", "c", "x", None),
             Sample("/d", "d", "x", None), Sample("/e", "e", "x", None)]
    # b is byte-identical to c; d and e are identical to each other; a is alone.
    groups = group_ids(items, ["h1", "h2", "h2", "h3", "h3"])
    assert groups[1] == groups[2] == "S2"
    assert groups[3] == groups[4] != groups[0]
    assert groups[0] == "S1"


def test_random_split_never_puts_a_subject_on_two_sides():
    items = samples(n_subjects=20)
    groups = group_ids(items, [None] * len(items))
    splits = assign_splits(items, groups, split_config(seed=3))
    manifest = build_manifest(items, groups, splits)
    check_no_leakage(manifest)
    assert manifest.groupby("subject")["split"].nunique().max() == 1
    counts = manifest["split"].value_counts()
    assert counts["val"] == pytest.approx(16, abs=4) and counts["test"] == pytest.approx(16, abs=4)
    # stratified: every class is in every split
    assert (manifest.groupby("split")["label"].nunique() == 2).all()


def test_leakage_check_refuses_a_subject_in_two_splits():
    manifest = pd.DataFrame({"sample_id": ["a", "b", "c"], "subject": ["S1", "S1", "S2"],
                             "group": ["S1", "S1", "S2"], "split": ["train", "test", "val"], "label": ["x"] * 3})
    with pytest.raises(AllclsError, match="1 subject\\(s\\) have images in more than one split.*S1"):
        check_no_leakage(manifest)


def test_leakage_check_refuses_identical_images_in_two_splits():
    manifest = pd.DataFrame({"sample_id": ["a", "b"], "subject": [None, None], "group": ["content:1", "content:1"],
                             "split": ["train", "val"], "label": ["x", "x"]})
    with pytest.raises(AllclsError, match="group"):
        check_no_leakage(manifest)


def test_split_hash_is_stable_and_changes_with_the_split():
    items = samples()
    groups = group_ids(items, [None] * len(items))
    first = build_manifest(items, groups, assign_splits(items, groups, split_config(seed=0)))
    again = build_manifest(items, groups, assign_splits(items, groups, split_config(seed=0)))
    other = build_manifest(items, groups, assign_splits(items, groups, split_config(seed=1)))
    assert manifest_hash(first) == manifest_hash(again) != manifest_hash(other)


def test_unknown_split_in_hints_is_refused():
    items = samples()
    with pytest.raises(AllclsError, match="unknown splits"):
        assign_splits(items, group_ids(items, [None] * len(items)), split_config(hints={"fold_0": "holdout"}))


@pytest.mark.parametrize("section, message", [
    ({"val_fracton": 0.2}, r"dataset.split.val_fracton is not a setting \(did you mean dataset.split.val_fraction\?\)"),
    ({"test_fraction": 1.5}, "test_fraction=1.5 must be at least 0 and below 1"),
])
def test_a_split_section_with_a_misspelt_key_or_a_bad_value_is_refused(section, message):
    with pytest.raises(AllclsError, match=message):
        typed(SplitSpec, section, "dataset.split")


def test_cnmc_split_uses_folds_and_the_preliminary_test_set(cnmc_root):
    dataset = prepare_dataset(CNMCReader(cnmc_root), split_config(hints=CNMC_HINTS))
    by_id = {s.sample_id: s for s in dataset.samples}
    for sample_id, split in zip(dataset.manifest["sample_id"], dataset.manifest["split"], strict=True):
        hint = by_id[sample_id].split_hint
        assert split == CNMC_HINTS[hint]


def test_cnmc_without_preliminary_test_draws_test_subjects_from_train(cnmc_root, tmp_path):
    root = tmp_path / "cnmc"
    shutil.copytree(cnmc_root, root)
    shutil.rmtree(root / "validation_data")
    dataset = prepare_dataset(CNMCReader(root), split_config(hints=CNMC_HINTS))
    manifest = dataset.manifest
    test_ids = set(manifest.query("split == 'test'")["sample_id"])
    assert test_ids and all(i.startswith(("training_data/fold_0", "training_data/fold_1")) for i in test_ids)
    assert set(manifest.query("split == 'val'")["sample_id"]) == {
        s.sample_id for s in dataset.samples if s.split_hint == "fold_2"}


def test_aria_duplicates_stay_in_one_split(aria_root):
    dataset = prepare_dataset(ARIAReader(aria_root), split_config())
    duplicated = dataset.manifest[dataset.manifest["group"].str.startswith("content:")]
    pairs = duplicated.groupby("group")["split"]
    assert (pairs.size() == 2).sum() == 2  # the generator writes 2 duplicate pairs into Pro
    assert (pairs.nunique() == 1).all()


def test_a_hint_map_that_leaks_is_refused(cnmc_root, tmp_path):
    root = tmp_path / "cnmc"
    shutil.copytree(cnmc_root, root)
    # Move one image of a fold-2 subject into fold 0: that subject now sits in train and val.
    image = next((root / "training_data" / "fold_2" / "all").glob("*.bmp"))
    image.rename(root / "training_data" / "fold_0" / "all" / image.name)
    with pytest.raises(AllclsError, match="The split leaks"):
        prepare_dataset(CNMCReader(root), split_config(hints=CNMC_HINTS))


def test_empty_split_is_refused(cnmc_root):
    hints = {"fold_0": "train", "fold_1": "train", "fold_2": "train", "prelim_test": "test"}
    with pytest.raises(AllclsError, match="The val split is empty"):
        prepare_dataset(CNMCReader(cnmc_root), split_config(hints=hints, val_fraction=0))


def test_manifest_is_written_and_reused_exactly(cnmc_root, tmp_path):
    first = prepare_dataset(CNMCReader(cnmc_root), split_config(hints=CNMC_HINTS))
    path = first.write_manifest(tmp_path / "manifest.csv")
    # A different hint map, but the manifest decides.
    reused = prepare_dataset(CNMCReader(cnmc_root), split_config(hints={}, manifest=str(path)))
    assert reused.split_hash == first.split_hash
    assert read_manifest(path, first.samples)["split"].tolist() == first.manifest["split"].tolist()


def test_manifest_of_other_data_is_refused(cnmc_root, aria_root, tmp_path):
    first = prepare_dataset(CNMCReader(cnmc_root), split_config(hints=CNMC_HINTS))
    path = first.write_manifest(tmp_path / "manifest.csv")
    with pytest.raises(AllclsError, match="does not match the dataset"):
        prepare_dataset(ARIAReader(aria_root), split_config(manifest=str(path)))


def test_an_image_split_puts_a_subjects_cells_on_both_sides_and_says_so_loudly(cnmc_root, caplog):
    """Only for benchmarks/leakage.py: what most ALL papers did."""
    dataset = prepare_dataset(CNMCReader(cnmc_root), split_config(by="image", hints=CNMC_HINTS))
    assert dataset.manifest.groupby("subject")["split"].nunique().max() > 1  # it leaks, by design
    assert "THIS SPLIT LEAKS" in caplog.text
    assert set(dataset.manifest["split"]) == {"train", "val", "test"}
    with pytest.raises(AllclsError, match="dataset.split.by='patient'"):
        split_config(by="patient")
