"""The Predictor: a model or an ensemble with each member's preprocessing, images in, probabilities
out; no MLflow inside. Also how it shares the CPU (loader workers and torch threads) and memory."""

import subprocess
import sys

import numpy as np
import pytest
import torch

from allcls.data.images import read_image
from allcls.data.readers import CNMCReader
from allcls.data.transforms import build_transform
from allcls.inference.combining import combine
from allcls.inference.members import Member, Preprocessing
from allcls.inference.predictor import Predictor
from allcls.inference.views import TTA_VIEWS
from allcls.machine import inference_workers, usable_cores
from allcls.models.backbones import BackboneSpec, create_backbone, input_spec


def member(name: str, size: int, roi_crop: bool, weight: float, seed: int) -> tuple[Member, torch.nn.Module]:
    torch.manual_seed(seed)
    spec = BackboneSpec("custom_cnn", input_size=size)
    return (Member(name, weight, "custom_cnn", Preprocessing(input_spec(spec), roi_crop)),
            create_backbone(spec, num_classes=2).eval())


def predictor(members: list[tuple[Member, torch.nn.Module]], **settings) -> Predictor:
    return Predictor([m for m, _ in members], [n for _, n in members], ["hem", "all"], **settings)


@pytest.fixture(scope="module")
def paths(cnmc_root) -> list[str]:
    return [s.path for s in CNMCReader(cnmc_root).read()[:10]]


@pytest.fixture(scope="module")
def ensemble() -> Predictor:
    members = [member("a", 32, True, 3.0, 0), member("b", 48, False, 1.0, 1), member("c", 32, True, 0.0, 2)]
    return predictor(members, rule="geometric", batch_size=4)


def by_hand(predictor: Predictor, paths: list[str], views: list[str]) -> np.ndarray:
    """Each member on its own preprocessing, its views averaged, combined with the normalised weights."""
    per_member = []
    for m, network in zip(predictor.members, predictor.networks, strict=True):
        transform = build_transform(m.preprocessing.spec, m.preprocessing.roi_crop)
        images = torch.stack([transform(image=read_image(p))["image"] for p in paths])
        with torch.no_grad():
            per_member.append((sum(network(TTA_VIEWS[v](images)).double().softmax(1) for v in views) / len(views))
                              .numpy())
    return combine(np.stack(per_member), np.array([0.75, 0.25, 0.0]), "geometric")


def test_an_ensemble_predicts_what_its_members_give_combined_with_their_weights(ensemble, paths):
    assert ensemble.preprocessings == [ensemble.members[0].preprocessing, ensemble.members[1].preprocessing]
    assert [p.roi_crop for p in ensemble.preprocessings] == [True, False]
    for views in (["identity"], ["identity", "hflip", "rot90"]):
        predicted = ensemble.predict(paths, views)
        assert predicted.shape == (len(paths), 2) and np.allclose(predicted.sum(axis=1), 1)
        assert predicted == pytest.approx(by_hand(ensemble, paths, views), abs=1e-6)


def test_decoded_images_predict_like_their_files(ensemble, paths):
    """What serving will hand it: arrays already decoded from an upload."""
    arrays = [read_image(p) for p in paths]
    assert ensemble.predict(arrays) == pytest.approx(ensemble.predict(paths), abs=1e-9)


def test_views_predicted_once_combine_like_a_tta_pass(ensemble, paths):
    views = ["identity", "vflip"]
    per_view = ensemble.view_probabilities(paths, views)
    assert per_view.shape == (2, 3, len(paths), 2)
    assert ensemble.combine_views([per_view[0]]) == pytest.approx(ensemble.predict(paths), abs=1e-12)
    assert ensemble.combine_views(list(per_view)) == pytest.approx(ensemble.predict(paths, views), abs=1e-12)


def test_on_a_cpu_loader_workers_and_torch_threads_never_outnumber_the_cores():
    before = torch.get_num_threads()
    try:
        for requested in (None, 0, 1):
            workers = inference_workers(requested, torch.device("cpu"))
            assert workers + torch.get_num_threads() <= max(usable_cores(), workers + 1)
        assert inference_workers(None, torch.device("cpu")) == usable_cores() // 8
    finally:
        torch.set_num_threads(before)


FORWARD_PASSES = """
import resource, sys
import torch
from allcls.machine import keep_freed_memory
taken = keep_freed_memory() if sys.argv[1] == "keep" else None
torch.set_num_threads(1)
conv = torch.nn.Conv2d(3, 16, 3, padding=1)
images = torch.zeros(8, 3, 224, 224)
with torch.inference_mode():
    conv(images).relu()
    start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):
        conv(images).relu()  # about 26 MB of activations, allocated and freed, as a CNN's layer does
print(taken, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_freed_activation_buffers_are_reused_instead_of_faulted_in_again():
    """Without the raised thresholds glibc returns each large buffer to the kernel, and the next
    forward pass faults all its pages in again (what made CPU evaluation spend most of its time in
    the kernel)."""
    def faults(mode: str) -> tuple[str, int]:
        out = subprocess.run([sys.executable, "-c", FORWARD_PASSES, mode], capture_output=True, text=True,
                             check=True).stdout.split()
        return out[0], int(out[1])

    (_, default), (taken, kept) = faults("default"), faults("keep")
    pages_per_pass = (8 * 16 * 224 * 224 * 4) // 4096
    assert taken == "True"
    assert default > 5 * pages_per_pass  # measured here: ~100,000 faults by default, ~6,000 kept
    assert kept * 5 < default


def test_a_predictor_that_has_predicted_can_still_explain(paths):
    """Grad-CAM after a prediction (what the page does): the models' parameters stay ordinary
    tensors, in channels-last, whatever inference mode the prediction ran in."""
    from allcls.inference.gradcam import member_maps

    single = predictor([member("a", 32, True, 1.0, 0)], batch_size=4)
    predicted = single.predict(paths[:2])
    _, maps = member_maps(single, paths[:2], predicted.argmax(1), show=False)
    assert len(maps) == 1 and maps[0].shape[0] == 2 and np.isfinite(maps[0]).all()
    conv = next(m for m in single.networks[0].modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last) and not conv.weight.is_inference()
