"""Readable Grad-CAM: maps laid back onto the image as uploaded, drawn with the region that matters
outlined, and where they look said in words."""

import cv2
import numpy as np
import pytest
import torch

from allcls.data.preprocessing import InputSpec, crop_to_foreground, foreground_box, foreground_square, preprocess
from allcls.inference.explanation import Explanation, cell_parts, draw, explain_images, place_of, to_image_frame
from allcls.inference.members import Member, Preprocessing
from allcls.inference.predictor import Predictor
from allcls.models.backbones import BackboneSpec, create_backbone, input_spec

SPEC = InputSpec(32, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


def a_cell(height: int = 90, width: int = 140, centre: tuple[int, int] = (40, 95)) -> np.ndarray:
    """A segmented cell off-centre on black: grey cytoplasm, a dark nucleus, and a red marker dot."""
    image = np.zeros((height, width, 3), np.uint8)
    cv2.circle(image, centre[::-1], 30, (170, 160, 200), -1)
    cv2.circle(image, centre[::-1], 14, (70, 40, 110), -1)
    return image


@pytest.mark.parametrize("roi_crop", [True, False])
def test_a_map_is_laid_back_where_the_member_saw_it_on_the_image_as_uploaded(roi_crop):
    image = a_cell()
    marker = (52, 110)  # (row, column) on the uploaded image, inside the cell
    marked = image.copy()
    cv2.circle(marked, marker[::-1], 3, (255, 0, 0), -1)
    # The member's view of the marked image, its red channel as the "map": the marker's spot must come back.
    seen = preprocess(marked, SPEC, roi_crop).astype(np.float32)
    cam = np.clip(seen[..., 0] - seen[..., 2], 0, None)
    framed = to_image_frame(cam / cam.max(), image.shape, Preprocessing(SPEC, roi_crop), image)
    assert framed.shape == image.shape[:2]
    peak = np.unravel_index(framed.argmax(), framed.shape)
    assert abs(peak[0] - marker[0]) <= 4 and abs(peak[1] - marker[1]) <= 4, peak
    if roi_crop:  # nothing outside the square the member saw
        top, left, side = foreground_square(image)
        assert framed[:, : max(left, 0)].max() == 0 and framed[:, left + side:].max() == 0


def test_the_square_is_where_the_crop_lies_and_the_crop_is_the_cells_box_padded_with_black():
    image = np.zeros((90, 140, 3), np.uint8)
    cv2.ellipse(image, (95, 40), (35, 20), 0, 0, 360, (170, 160, 200), -1)  # wider than tall: padded to a square
    image[image.max(axis=2) == 0] = 6  # a near-black background (below the threshold), as real scans have
    top, left, side = foreground_square(image)
    crop = crop_to_foreground(image)
    assert crop.shape[:2] == (side, side)
    box_top, box_left, bottom, right = foreground_box(image)
    rows, columns = slice(box_top - top, bottom - top), slice(box_left - left, right - left)
    assert (crop[rows, columns] == image[box_top:bottom, box_left:right]).all()  # the box as it is
    outside = np.ones(crop.shape[:2], bool)
    outside[rows, columns] = False
    assert outside.any() and (crop[outside] == 0).all()  # padded with black, never with the image's own pixels
    assert foreground_square(np.zeros((8, 8, 3), np.uint8)) is None


def test_the_drawing_keeps_the_image_where_the_map_is_weak_and_outlines_where_it_is_strong():
    image = a_cell()
    cam = np.zeros(image.shape[:2], np.float32)
    cam[25:55, 80:110] = 1.0
    drawn = draw(image, cam)
    assert drawn.shape == image.shape and drawn.dtype == np.uint8
    assert (drawn[:15, :60] == image[:15, :60]).all()  # far from the region: the image as it is
    assert np.abs(drawn[40, 95].astype(int) - image[40, 95]).sum() > 60  # the colour where the map peaks
    assert (drawn[25:55, 79:81] >= 240).all(axis=2).any()  # the outline, white


def test_where_a_map_looks_is_said_in_the_cells_words():
    image = a_cell()
    parts = cell_parts(image)
    assert parts["nucleus"][40, 95] and parts["cytoplasm"][40, 70] and parts["background"][5, 5]
    on = np.zeros(image.shape[:2], np.float32)
    on[35:45, 90:100] = 1
    assert place_of(on, parts) == "nucleus"
    corner = np.zeros(image.shape[:2], np.float32)
    corner[:20, :20] = 1
    assert place_of(corner, parts) == "background"
    maps = {"a": on, "b": on, "c": on, "d": corner}
    said = Explanation(on, maps, {"a": "nucleus", "b": "nucleus", "c": "nucleus", "d": "background"}, "nucleus")
    assert said.agreement() == "3 of 4 members look mostly at the nucleus; the others at the background."
    assert said.disagree


def test_an_ensemble_is_explained_in_one_pass_per_member_in_each_images_own_frame():
    members, networks = [], []
    for index, (size, crop) in enumerate(((32, True), (48, False))):
        torch.manual_seed(index)
        spec = BackboneSpec("custom_cnn", input_size=size)
        members.append(Member(f"m{index}", 1.0 + index, "custom_cnn", Preprocessing(input_spec(spec), crop)))
        networks.append(create_backbone(spec, num_classes=2).eval())
    predictor = Predictor(members, networks, ["hem", "all"])
    images = [a_cell(), a_cell(64, 64, (30, 30))]
    explained = explain_images(predictor, images, [1, 0])
    assert [e.combined.shape for e in explained] == [(90, 140), (64, 64)]
    assert all(set(e.members) == {"m0", "m1"} and e.combined.min() >= 0 and e.combined.max() <= 1 for e in explained)
    assert explain_images(predictor, [], []) == []
