"""Members exported to ONNX and run by ONNX Runtime answer as their torch networks do: the same
preprocessing (shared, so identical inputs), the same views, the same features, logits and
probabilities within float tolerance, the same summaries for the out-of-distribution gate."""

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F

from allcls.data.readers import CNMCReader
from allcls.inference.members import Member, Preprocessing, prepared
from allcls.inference.onnx_export import agreement, export_member
from allcls.inference.onnx_runtime import OnnxPredictor
from allcls.inference.ood import summarise_inputs
from allcls.inference.predictor import Predictor
from allcls.inference.views import ALL_VIEWS, ARRAY_VIEWS, TTA_VIEWS
from allcls.models.backbones import BackboneSpec, create_backbone, input_spec

CLASSES = ["hem", "all"]


def member(name: str, backbone: str, size: int, roi_crop: bool, weight: float, seed: int
           ) -> tuple[Member, torch.nn.Module]:
    torch.manual_seed(seed)
    spec = BackboneSpec(backbone, input_size=size)
    return (Member(name, weight, backbone, Preprocessing(input_spec(spec), roi_crop)),
            create_backbone(spec, num_classes=2).eval())


@pytest.fixture(scope="module")
def paths(cnmc_root) -> list[str]:
    return [s.path for s in CNMCReader(cnmc_root).read()[:10]]


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[Predictor, list]:
    """A two-member ensemble (a timm MobileNetV2, untrained: its batch norms and depthwise
    convolutions are what export can get wrong; the custom CNN on a cell crop at another size), as
    torch networks and as graphs."""
    folder = tmp_path_factory.mktemp("onnx")
    members = [member("a", "mobilenetv2_100", 32, False, 2.0, 0), member("b", "custom_cnn", 48, True, 1.0, 1)]
    torch_predictor = Predictor([m for m, _ in members], [n for _, n in members], CLASSES, "arithmetic", batch_size=4)
    graphs = [export_member(network, m, folder / f"{m.name}.onnx") for m, network in members]
    return torch_predictor, graphs


def test_each_graph_is_valid_onnx_with_a_dynamic_batch_of_uint8_images(exported):
    _, graphs = exported
    for graph in graphs:
        model = onnx.load(str(graph))
        onnx.checker.check_model(model, full_check=True)
        (images,) = model.graph.input
        assert images.name == "images" and images.type.tensor_type.elem_type == onnx.TensorProto.UINT8
        batch, *rest = [d.dim_param or d.dim_value for d in images.type.tensor_type.shape.dim]
        assert isinstance(batch, str) and rest[-1] == 3  # a named (dynamic) batch axis, channels last
        assert [o.name for o in model.graph.output] == ["features", "logits"]


def test_onnx_runtime_answers_as_the_torch_networks_with_every_view(exported, paths):
    torch_predictor, graphs = exported
    runtime = OnnxPredictor(torch_predictor.members, graphs, CLASSES, "arithmetic", batch_size=3)
    expected = torch_predictor.outputs(paths, ALL_VIEWS, show_progress=False)
    got = runtime.outputs(paths, ALL_VIEWS, show_progress=False)
    assert got.per_view.shape == expected.per_view.shape == (len(ALL_VIEWS), 2, len(paths), 2)
    np.testing.assert_allclose(got.per_view, expected.per_view, atol=1e-4)  # float32, fused differently
    assert (got.per_view.argmax(axis=3) == expected.per_view.argmax(axis=3)).all()
    for m in range(2):  # what the gate reads: the same summaries (shared preprocessing), features and logits
        np.testing.assert_array_equal(got.inputs[m], expected.inputs[m])
        np.testing.assert_allclose(got.features[m], expected.features[m], rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(got.logits[m], expected.logits[m], rtol=1e-4, atol=1e-4)
    checked = agreement(expected.per_view[0], runtime, paths)
    assert checked["label_agreement"] == 1.0 and checked["max_abs_difference"] < 1e-4 and checked["cells"] == 10


def test_the_array_views_are_the_tensor_views(paths):
    images = np.stack(prepared(paths[0], [Preprocessing(input_spec(BackboneSpec("custom_cnn", input_size=24)))]) * 2)
    tensors = torch.from_numpy(images).permute(0, 3, 1, 2)  # (N, 3, H, W), as the torch predictor turns them
    for view in ALL_VIEWS:
        turned = torch.from_numpy(np.ascontiguousarray(ARRAY_VIEWS[view](images))).permute(0, 3, 1, 2)
        assert torch.equal(turned, TTA_VIEWS[view](tensors)), view


def torch_summary(images: torch.Tensor) -> np.ndarray:
    """The gate's input summary as torch computed it before it moved to numpy (allcls 0.5)."""
    x = images.float().div(255).permute(0, 3, 1, 2)
    flat = x.flatten(2)
    grid = F.adaptive_avg_pool2d(x, 4).flatten(1)
    bins = (flat * 8).long().clamp(0, 7)
    histogram = F.one_hot(bins, 8).float().mean(dim=2).flatten(1)
    return torch.cat([flat.mean(2), flat.std(2), grid, histogram], dim=1).double().numpy()


@pytest.mark.parametrize("size", [32, 30, 45])  # 30 and 45: the grid's cells overlap, as torch's pooling makes them
def test_the_input_summary_is_torchs_whatever_the_size(size):
    images = np.random.default_rng(size).integers(0, 256, (5, size, size, 3), dtype=np.uint8)
    images[0] = 0  # an all-black image too: no spread, one bin
    np.testing.assert_allclose(summarise_inputs(images), torch_summary(torch.from_numpy(images)), rtol=1e-5, atol=1e-6)
