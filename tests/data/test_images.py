"""Odd and broken image files: decoded to RGB where possible, reported by path where not."""

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from allcls.data.datamodule import CellDataModule
from allcls.data.images import ImageReadError, check_image, read_image, to_rgb_uint8
from allcls.data.preparation import ImageChecks, prepare_dataset
from allcls.data.preprocessing import InputSpec, preprocess
from allcls.data.readers import CNMCReader
from allcls.data.splits import SplitSpec
from allcls.errors import AllclsError

SPEC = InputSpec(32, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
CNMC_SPLIT = SplitSpec(hints={"fold_0": "train", "fold_1": "train", "fold_2": "val", "prelim_test": "test"})


def test_grayscale_becomes_three_equal_channels(tmp_path):
    path = tmp_path / "gray.png"
    cv2.imwrite(str(path), np.arange(64, dtype=np.uint8).reshape(8, 8))
    image = read_image(path)
    assert image.shape == (8, 8, 3) and image.dtype == np.uint8
    assert (image[..., 0] == image[..., 2]).all() and image[0, 1, 0] == 1


def test_rgba_is_composited_onto_black_and_keeps_rgb_order(tmp_path):
    path = tmp_path / "rgba.png"
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0] = 200  # red
    rgba[:2, :, 3] = 255  # top half opaque, bottom half transparent
    Image.fromarray(rgba, "RGBA").save(path)
    image = read_image(path)
    assert image.shape == (4, 4, 3)
    assert tuple(image[0, 0]) == (200, 0, 0) and tuple(image[3, 0]) == (0, 0, 0)


def test_sixteen_bit_images_are_scaled_to_eight_bits(tmp_path):
    path = tmp_path / "deep.png"
    levels = np.array([[0, 257 * 10, 32768, 65535]], np.uint16)  # clipping instead of scaling gives 0 255 255 255
    cv2.imwrite(str(path), np.repeat(levels, 2, axis=0))
    image = read_image(path)
    assert image.dtype == np.uint8 and image[0, :, 0].tolist() == [0, 10, 127, 255]
    assert (image[..., 0] == image[..., 1]).all() and (image[..., 1] == image[..., 2]).all()  # grey stays grey


def test_float_images_in_zero_one_are_scaled_and_others_clipped_with_nan_as_black():
    unit = np.array([[0.0, 0.5, 1.0]], np.float32)
    assert to_rgb_uint8(unit, bgr=False)[0, :, 0].tolist() == [0, 127, 255]
    wide = np.array([[-4.0, 100.0, 300.0, np.nan]], np.float64)
    assert to_rgb_uint8(wide, bgr=False)[0, :, 0].tolist() == [0, 100, 255, 0]


def test_palette_gif_decodes_through_the_fallback(tmp_path):
    path = tmp_path / "palette.gif"
    Image.new("P", (5, 3), color=7).save(path)
    assert read_image(path).shape == (3, 5, 3)


@pytest.mark.parametrize("side", [1, 3000])
def test_tiny_and_large_images_read_and_resize(tmp_path, side):
    path = tmp_path / f"{side}.jpg"
    cv2.imwrite(str(path), np.full((side, side, 3), 90, np.uint8))
    image = read_image(path)
    assert image.shape == (side, side, 3)
    resized = preprocess(image, InputSpec(32, (0.5,) * 3, (0.25,) * 3), roi_crop=False)
    assert resized.shape == (32, 32, 3) and resized.dtype == np.uint8
    assert np.abs(resized.astype(int) - 90).max() <= 2  # a flat image stays flat (JPEG moves it a level or two)


@pytest.mark.parametrize("content, reason", [
    (b"", "empty"),
    (b"this is not an image" * 10, "not an image"),
])
def test_unreadable_files_name_the_path_and_the_problem(tmp_path, content, reason):
    path = tmp_path / "broken.bmp"
    path.write_bytes(content)
    with pytest.raises(ImageReadError, match=f"{path}.*{reason}.*skip_unreadable_images"):
        read_image(path)


def test_truncated_image_is_reported(tmp_path, cnmc_root):
    source = next((cnmc_root / "training_data").rglob("*.bmp"))
    path = tmp_path / "truncated.bmp"
    path.write_bytes(source.read_bytes()[: source.stat().st_size // 2])
    check = check_image(path)
    assert check.sha1 is None and "truncated" in check.problem


def test_check_image_hashes_the_bytes(cnmc_root, tmp_path):
    source = next((cnmc_root / "training_data").rglob("*.bmp"))
    twin = tmp_path / "twin.bmp"
    shutil.copyfile(source, twin)
    assert check_image(source).sha1 == check_image(twin).sha1 is not None


# --- in preparation: found before training, listed by path, never counted as a class ----------

@pytest.fixture
def cnmc_with_broken_images(cnmc_root, tmp_path):
    root = tmp_path / "cnmc"
    shutil.copytree(cnmc_root, root)
    broken = sorted((root / "training_data" / "fold_0" / "all").glob("*.bmp"))[:2]
    broken[0].write_bytes(b"")
    broken[1].write_bytes(broken[1].read_bytes()[:100])
    return root, broken


def test_preparation_refuses_unreadable_images_listing_them(cnmc_with_broken_images):
    root, broken = cnmc_with_broken_images
    message = "2 image\\(s\\) cannot be read.*dataset.skip_unreadable_images=true"
    with pytest.raises(AllclsError, match=message) as error:
        prepare_dataset(CNMCReader(root), CNMC_SPLIT)
    assert all(str(path) in str(error.value) for path in broken)


def test_preparation_can_leave_unreadable_images_out(cnmc_with_broken_images):
    root, broken = cnmc_with_broken_images
    dataset = prepare_dataset(CNMCReader(root), CNMC_SPLIT, ImageChecks(skip_unreadable_images=True))
    assert sorted(path for path, _ in dataset.unreadable) == sorted(map(str, broken))
    kept = set(dataset.manifest["sample_id"])
    assert not any(Path(p).relative_to(root).as_posix() in kept for p in broken)
    module = CellDataModule(dataset, SPEC, num_workers=0)
    module.setup()
    assert len(module.datasets["train"]) + len(module.datasets["val"]) + len(module.datasets["test"]) == len(kept)


def test_image_broken_after_the_check_stops_the_epoch_naming_it(cnmc_root, tmp_path):
    root = tmp_path / "cnmc"
    shutil.copytree(cnmc_root, root)
    module = CellDataModule(prepare_dataset(CNMCReader(root), CNMC_SPLIT), SPEC, num_workers=0)
    module.setup()
    victim = Path(module.datasets["train"].paths[0])
    victim.write_bytes(b"\x00" * 10)
    with pytest.raises(ImageReadError, match=str(victim)):
        list(module.train_dataloader())


def cells(root: Path, per_class: dict[str, int]) -> Path:
    """A folder dataset of distinct small images, `count` per class."""
    rng = np.random.default_rng(0)
    for label, count in per_class.items():
        (root / label).mkdir(parents=True, exist_ok=True)
        for k in range(count):
            cv2.imwrite(str(root / label / f"{k}.png"), rng.integers(0, 255, (8, 8, 3), dtype=np.uint8))
    return root


@pytest.mark.parametrize("case, message", [
    ("one_class", r"has only the class\(es\) \['blast'\]: a classifier needs at least two"),
    ("comma", r"class name\(s\) \['blast,early'\]: rename them without ','"),
    ("conflict", r"1 image\(s\) appear with the same bytes under different classes .*blast/copy.png \(blast\) = "
                 r".*normal/0.png \(normal\)"),
])
def test_labels_that_cannot_be_trusted_are_refused_naming_the_files(tmp_path, case, message):
    from allcls.data.readers import FolderReader

    root = tmp_path / "cells"
    if case == "one_class":
        cells(root, {"blast": 6})
    elif case == "comma":
        cells(root, {"blast,early": 6, "normal": 6})
    else:
        cells(root, {"blast": 6, "normal": 6})
        shutil.copyfile(root / "normal" / "0.png", root / "blast" / "copy.png")
    with pytest.raises(AllclsError, match=message):
        prepare_dataset(FolderReader(root), SplitSpec(val_fraction=0.2, test_fraction=0.2))


def test_one_class_is_fine_to_evaluate_on(tmp_path):
    """Another dataset that holds only blasts can still be evaluated (no split, nothing trained)."""
    from allcls.data.readers import FolderReader

    dataset = prepare_dataset(FolderReader(cells(tmp_path / "cells", {"blast": 4})), None)
    assert dataset.classes == ("blast",) and len(dataset.samples) == 4
