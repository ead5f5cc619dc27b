"""Architecture registry: every architecture builds for its sizes and channels, small-input stems, CAM layers,
head freezing, and clear errors."""

import pytest
import torch

from histo_core.errors import ConfigError, HistoError
from histo_core.models import (
    ARCHITECTURES,
    SMALL_STEM_BELOW,
    build_model,
    cam_target_layer,
    check_input,
    head_module,
    set_backbone_trainable,
)

CPU_CHEAP = ["simplecnn", "cnn3", "resnet9", "resnet18"]


@pytest.mark.parametrize("name", CPU_CHEAP)
@pytest.mark.parametrize("size,channels", [(28, 3), (28, 1), (64, 3)])
def test_builds_and_runs(name, size, channels):
    model = build_model(name, 9, channels, size).eval()
    with torch.no_grad():
        assert model(torch.zeros(2, channels, size, size)).shape == (2, 9)


@pytest.mark.parametrize("name", ["resnet50", "densenet121"])
def test_big_backbones_build_at_their_smallest_size(name):
    model = build_model(name, 2, 3, 16).eval()
    with torch.no_grad():
        assert model(torch.zeros(1, 3, 16, 16)).shape == (1, 2)


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "densenet121"])
def test_small_inputs_get_a_stride_one_stem(name):
    small, large = build_model(name, 2, 3, 28), build_model(name, 2, 3, SMALL_STEM_BELOW)
    conv_small = small.conv1 if name.startswith("resnet") else small.features.conv0
    conv_large = large.conv1 if name.startswith("resnet") else large.features.conv0
    assert conv_small.kernel_size == (3, 3) and conv_small.stride == (1, 1)
    assert conv_large.kernel_size == (7, 7) and conv_large.stride == (2, 2)


@pytest.mark.parametrize("name", CPU_CHEAP)
@pytest.mark.parametrize("size", [28, 64])
def test_cam_layer_keeps_a_spatial_map(name, size):
    model = build_model(name, 3, 3, size).eval()
    layer = cam_target_layer(model, name, size)
    seen = {}
    handle = layer.register_forward_hook(lambda m, i, o: seen.update(shape=o.shape))  # returns None: output kept
    with torch.no_grad():
        model(torch.zeros(1, 3, size, size))
    handle.remove()
    assert seen["shape"][-1] >= 7 and seen["shape"][-2] >= 7


def test_frozen_mlp_head_and_backbone_freezing():
    model = build_model("resnet18", 4, 3, 32, mlp_head=True)
    head = head_module(model, "resnet18")
    assert isinstance(head, torch.nn.Sequential) and head[0].out_features == 512 and head[-1].out_features == 4
    set_backbone_trainable(model, "resnet18", False)
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert trainable == {id(p) for p in head.parameters()}
    set_backbone_trainable(model, "resnet18", True)
    assert all(p.requires_grad for p in model.parameters())


def test_input_checks_name_the_fix():
    with pytest.raises(ConfigError, match="resnet18 takes tiles of 16..1024 px, got 8 px"):
        check_input("resnet18", 8, 3)
    with pytest.raises(ConfigError, match="1 or 3 channels"):
        check_input("cnn3", 28, 4)
    with pytest.raises(ConfigError, match="--arch must be one of"):
        build_model("vgg", 2)
    with pytest.raises(ConfigError, match="at least 2 classes"):
        build_model("cnn3", 1)
    with pytest.raises(ConfigError, match="no ImageNet weights exist for ResNet9"):
        build_model("resnet9", 2, pretrained=True)


def test_pretrained_offline_error_names_the_file(monkeypatch):
    import torchvision.models as tvm

    def offline(*a, **k):
        raise OSError("no network")

    monkeypatch.setattr(tvm._api.WeightsEnum, "get_state_dict", offline)
    with pytest.raises(HistoError, match=r"resnet18-f37072fd\.pth"):
        build_model("resnet18", 2, pretrained=True)


def test_registry_entries_are_consistent():
    for name, spec in ARCHITECTURES.items():
        assert spec.name == name and spec.min_size <= 28 <= spec.max_size
        model = build_model(name, 2, 3, max(spec.min_size, 28))
        assert hasattr(model, spec.head_attr)


def test_simplecnn_pool_before_relu_is_the_course_projects_function():
    """SimpleCNN's first block pools before its ReLU (faster); outputs and weight gradients must equal those of
    the textbook conv-ReLU-pool order with the same weights, and state-dict keys must not move (old runs)."""
    torch.manual_seed(0)
    model = build_model("simplecnn", 9, 3, 28)
    assert [k for k in model.state_dict() if k.startswith("features")] == [
        "features.0.weight",
        "features.0.bias",
        "features.3.weight",
        "features.3.bias",
    ]
    f = model.features
    textbook = torch.nn.Sequential(f[0], torch.nn.ReLU(), torch.nn.MaxPool2d(2), *list(f)[3:], model.head)
    x = torch.randn(4, 3, 28, 28)
    out, ref = model(x), textbook(x)
    assert torch.allclose(out, ref, atol=1e-6)
    g = torch.autograd.grad(out.square().sum(), f[0].weight)[0]
    g_ref = torch.autograd.grad(ref.square().sum(), f[0].weight)[0]
    assert torch.allclose(g, g_ref, atol=1e-5)
    assert isinstance(f[1], torch.nn.MaxPool2d) and isinstance(f[2], torch.nn.ReLU)
    assert cam_target_layer(model, "simplecnn", 28) is f[4] and isinstance(f[4], torch.nn.ReLU)
