"""Each reader against a tree in its real published layout, and the layouts it must refuse."""

import logging
import shutil
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest

from allcls.data.readers import ARIAReader, CNMCReader, FolderReader, cnmc_subject
from allcls.data.synthetic import SyntheticReader
from allcls.errors import AllclsError


def write_image(path: Path, size: int = 8) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((size, size, 3), 120, np.uint8))
    return path


def copy_tree(source: Path, tmp_path: Path) -> Path:
    target = tmp_path / "copy"
    shutil.copytree(source, target)
    return target


# --- C-NMC -----------------------------------------------------------------------------------

def test_cnmc_subject_ids_are_parsed_case_insensitively():
    assert cnmc_subject("UID_57_29_1_all.bmp") == "57"
    assert cnmc_subject("UID_H49_35_1_hem.bmp") == "H49"
    assert cnmc_subject("UID_h3_4_1_hem.bmp") == "H3"
    assert cnmc_subject("uid_H10_1_1_HEM.BMP") == "H10"
    assert cnmc_subject("1.bmp") is None


def test_cnmc_reads_folds_and_the_preliminary_test_set(cnmc_root, caplog):
    with caplog.at_level(logging.WARNING):
        samples = CNMCReader(cnmc_root).read()
    training = [s for s in samples if s.split_hint.startswith("fold_")]
    prelim = [s for s in samples if s.split_hint == "prelim_test"]
    # 9 subjects per class x 8 cells in training; 3 per class in the preliminary test set.
    assert len(training) == 2 * 9 * 8 and len(prelim) == 2 * 3 * 8
    assert Counter(s.label for s in prelim) == {"hem": 24, "all": 24}
    assert {s.split_hint for s in training} == {"fold_0", "fold_1", "fold_2"}
    # Subjects come from the file names (training) and from Patient_ID (preliminary test).
    assert all(s.subject for s in samples)
    assert {s.subject for s in training if s.label == "hem"} == {f"H{k}" for k in range(1, 10)}
    assert not {s.subject for s in training} & {s.subject for s in prelim}
    # The labels file lists two images that are not there: skipped, with one warning that counts them.
    assert "2 of 50 rows" in caplog.text
    # Sample ids are paths relative to the root.
    assert training[0].sample_id.startswith("training_data/fold_")
    assert all((cnmc_root / s.sample_id).is_file() for s in samples)


def test_cnmc_lowercase_h_subjects_are_the_same_people_as_uppercase(cnmc_root):
    names = [p.name for p in (cnmc_root / "training_data").rglob("UID_h*")]
    assert names, "the generator writes some hem subjects with a lowercase h, like the original"
    assert all(cnmc_subject(n).startswith("H") for n in names)


def test_cnmc_without_the_preliminary_test_set_reads_the_folds_only(cnmc_root, tmp_path):
    root = copy_tree(cnmc_root, tmp_path)
    shutil.rmtree(root / "validation_data")
    samples = CNMCReader(root).read()
    assert {s.split_hint for s in samples} == {"fold_0", "fold_1", "fold_2"}
    assert len(CNMCReader(cnmc_root, include_prelim_test=False).read()) == len(samples)


def test_cnmc_points_at_the_right_root_when_given_its_parent(cnmc_root):
    with pytest.raises(AllclsError, match=f"Did you mean dataset.root={cnmc_root}"):
        CNMCReader(cnmc_root.parent).read()


@pytest.mark.parametrize("root", ["/no/such/folder", ""])
def test_cnmc_refuses_a_missing_root(root):
    with pytest.raises(AllclsError, match="dataset.root"):
        CNMCReader(root).read()


def test_cnmc_refuses_an_unexpected_class_folder(cnmc_root, tmp_path):
    root = copy_tree(cnmc_root, tmp_path)
    write_image(root / "training_data" / "fold_0" / "blast" / "UID_9_1_1_all.bmp")
    with pytest.raises(AllclsError, match="Unexpected folder .*blast"):
        CNMCReader(root).read()


def test_cnmc_refuses_an_empty_class(tmp_path):
    for fold in range(3):
        write_image(tmp_path / "training_data" / f"fold_{fold}" / "all" / f"UID_{fold}_1_1_all.bmp")
        (tmp_path / "training_data" / f"fold_{fold}" / "hem").mkdir()
    with pytest.raises(AllclsError, match="Class 'hem' .* has no images"):
        CNMCReader(tmp_path).read()


def test_cnmc_refuses_classes_that_do_not_match_the_data(cnmc_root):
    with pytest.raises(AllclsError, match=r"no folder for class\(es\) \['normal', 'leukemia'\]"):
        CNMCReader(cnmc_root, classes=["normal", "leukemia"]).read()


def test_cnmc_refuses_a_labels_file_with_another_header(cnmc_root, tmp_path):
    root = copy_tree(cnmc_root, tmp_path)
    (root / "validation_data" / "C-NMC_test_prelim_phase_data_labels.csv").write_text("name,label\n1.bmp,1\n")
    with pytest.raises(AllclsError, match="Patient_ID,new_names,labels"):
        CNMCReader(root).read()


def test_cnmc_class_order_follows_the_config(cnmc_root):
    reader = CNMCReader(cnmc_root, classes=["all", "hem"])
    assert reader.class_names(reader.read()) == ["all", "hem"]


# --- the 4-class ALL image dataset -----------------------------------------------------------

@pytest.mark.parametrize("variant", ["Original", "Segmented"])
def test_aria_reads_both_variants_with_the_same_file_names(aria_root, variant):
    samples = ARIAReader(aria_root, variant=variant).read()
    assert Counter(s.label for s in samples) == {c: 12 * 6 for c in ("Benign", "Early", "Pre", "Pro")}
    assert all(s.subject is None and s.split_hint is None for s in samples)
    assert all(s.sample_id.startswith(f"{variant}/") for s in samples)
    other = "Segmented" if variant == "Original" else "Original"
    names = {Path(s.sample_id).relative_to(variant) for s in samples}
    assert names == {Path(s.sample_id).relative_to(other) for s in ARIAReader(aria_root, variant=other).read()}


def test_aria_segmented_images_have_a_black_background(aria_root):
    sample = ARIAReader(aria_root, variant="Segmented").read()[0]
    image = cv2.imread(sample.path)
    assert image[0, 0].max() < 20 and image[image.shape[0] // 2, image.shape[1] // 2].max() > 40


def test_aria_suggests_the_parent_when_given_the_variant_folder(aria_root):
    with pytest.raises(AllclsError, match=f"dataset.root={aria_root} dataset.variant=Original"):
        ARIAReader(aria_root / "Original").read()


def test_aria_refuses_an_unknown_variant(aria_root):
    with pytest.raises(AllclsError, match="variant='Masked'"):
        ARIAReader(aria_root, variant="Masked")


def test_aria_leaves_out_folders_that_are_not_classes_and_says_so(aria_root, tmp_path, caplog):
    root = copy_tree(aria_root, tmp_path)
    write_image(root / "Original" / "Healthy" / "LY_1.jpg")  # as in one public copy of the dataset
    with caplog.at_level(logging.WARNING):
        samples = ARIAReader(root).read()
    assert "Healthy" in caplog.text and all(s.label != "Healthy" for s in samples)


# --- generic class folders --------------------------------------------------------------------

def test_folder_reader_takes_classes_from_folder_names(tmp_path):
    for label, count in (("b", 2), ("a", 3)):
        for k in range(count):
            write_image(tmp_path / label / f"{k}.png")
    (tmp_path / "a" / "notes.txt").write_text("not an image")
    reader = FolderReader(tmp_path)
    samples = reader.read()
    assert reader.class_names(samples) == ["a", "b"]
    assert reader.classes is None  # reading taught the reader nothing: the classes are the data's
    assert Counter(s.label for s in samples) == {"a": 3, "b": 2}
    assert samples[0].sample_id == "a/0.png"


def test_folder_reader_refuses_a_tree_without_class_folders(tmp_path):
    write_image(tmp_path / "loose.png")
    with pytest.raises(AllclsError, match=r"has no folder for class\(es\) \['a', 'b'\] .* \(found \[\]\)\. Point "
                       r"dataset\.root at the right folder or correct dataset\.classes\."):
        FolderReader(tmp_path, classes=["a", "b"]).read()


# --- synthetic ---------------------------------------------------------------------------------

def test_synthetic_reader_writes_then_reads_through_the_real_reader(tmp_path):
    reader = SyntheticReader(tmp_path, layout="cnmc", image_size=24, subjects_per_class=3, cells_per_subject=2)
    samples = reader.read()
    assert reader.name == "synthetic-cnmc" and reader.class_names(samples) == ["hem", "all"]
    folder = next(tmp_path.iterdir())
    assert (folder / "training_data" / "fold_0" / "all").is_dir()
    assert {s.split_hint for s in samples} == {"fold_0", "fold_1", "fold_2", "prelim_test"}
