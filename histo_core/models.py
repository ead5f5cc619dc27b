"""Architecture registry: one `ArchSpec` per architecture, holding its builder, input sizes, classifier head
and Grad-CAM target layer.

    model = build_model("resnet18", num_classes=9, in_channels=3, input_size=28)
    layer = cam_target_layer(model, "resnet18", input_size=28)

ResNets and DenseNet get a MedMNIST-style stem (3x3 stride-1 first conv, no max-pool) for tiles smaller
than 64 px, so feature maps, and Grad-CAM, keep spatial detail. Adding an architecture is one entry: an
`ArchSpec` in ARCHITECTURES below (or `register_architecture(ArchSpec(...))` from outside), and it appears in
the CLI, the Train page and the Classify page (maps included).

A run that trains several networks (`codivide`) keeps them as one `MeanEnsemble` (checkpoint key "members"):
its output is the log of the members' mean softmax, so every consumer that takes a softmax gets their mean
probabilities; Grad-CAM's layer and the feature layers are the first member's (`first_member`).
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import nn

from histo_core.errors import ConfigError, HistoError

SMALL_STEM_BELOW = 64  # input sizes below this get the 3x3 stride-1 stem without max-pool


@dataclass(frozen=True)
class ArchSpec:
    name: str
    title: str
    min_size: int
    max_size: int
    has_backbone: bool  # supports pretrained weights and frozen / fine_tune modes
    builder: Callable[..., nn.Module]
    head_attr: str  # attribute holding the classifier head
    cam_layer: Callable[[Any, int], nn.Module]  # (model, input size) -> the layer Grad-CAM hooks
    description: str = ""


class SimpleCNN(nn.Module):
    """The two-conv network of the TissueMNIST course project: conv 10 and 20 (3x3), 2x2 max-pools,
    FC 980-100-50-classes at 28 px (980 = 20 * 7 * 7; the FC input scales with the tile size).

    The first block pools before its ReLU: max-pool and ReLU commute (max(relu(a), relu(b)) = relu(max(a, b))),
    so the function and the parameters are those of conv-ReLU-pool, with a quarter of the elements through the
    ReLU and its backward (about 10% of a training step at 28 px; benchmarks/RESULTS.md). The second block keeps
    conv-ReLU-pool so that its ReLU, the Grad-CAM layer, stays at half the input resolution."""

    def __init__(self, num_classes: int, in_channels: int = 3, input_size: int = 28):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 10, 3, padding=1),
            nn.MaxPool2d(2),
            nn.ReLU(inplace=True),
            nn.Conv2d(10, 20, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        )
        side = input_size // 4
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(20 * side * side, 100),
            nn.ReLU(inplace=True),
            nn.Linear(100, 50),
            nn.ReLU(inplace=True),
            nn.Linear(50, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class CNN3(nn.Module):
    """Three conv blocks (conv 3x3 + ReLU + 2x2 max-pool + dropout; 32/64/128 channels), FC 128, dropout 0.5:
    the custom CNN of the Quilt-1M project."""

    def __init__(self, num_classes: int, in_channels: int = 3, input_size: int = 28, dropout: float = 0.25):
        super().__init__()

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(cin, cout, 3, padding=1),
                nn.BatchNorm2d(cout),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
                nn.Dropout(dropout),
            )

        self.features = nn.Sequential(block(in_channels, 32), block(32, 64), block(64, 128))
        side = input_size // 8
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(128 * side * side, 128),
            nn.ReLU(inplace=True),
            nn.Dropout(0.5),
            nn.Linear(128, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _conv_bn(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class _Residual(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(_conv_bn(channels, channels), _conv_bn(channels, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class ResNet9(nn.Module):
    """The compact ResNet-9 of the DAWNBench CIFAR-10 entries (Page 2018; cf. KellerJordan/cifar10-airbench):
    prep conv, then three stages conv-BN-ReLU + 2x2 max-pool, residual blocks after the first and the
    last, global max-pool, a linear head scaled by 1/8. `width` 16 gives 16/32/64/128 channels (0.4M
    parameters): on 200 PathMNIST tiles it generalised as well as width 32 (cross-validated, see
    benchmarks/RESULTS.md) at 2.5x the speed, a fraction of a second per 200-tile epoch on a CPU."""

    def __init__(self, num_classes: int, in_channels: int = 3, input_size: int = 28, width: int = 16):
        super().__init__()
        w = width
        self.features = nn.Sequential(
            _conv_bn(in_channels, w),
            nn.Sequential(_conv_bn(w, 2 * w), nn.MaxPool2d(2), _Residual(2 * w)),
            nn.Sequential(_conv_bn(2 * w, 4 * w), nn.MaxPool2d(2)),
            nn.Sequential(_conv_bn(4 * w, 8 * w), nn.MaxPool2d(2), _Residual(8 * w)),
        )
        self.head = nn.Sequential(nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(8 * w, num_classes, bias=False))
        self.scale = 0.125  # keeps the initial logits small, as in the DAWNBench ResNet-9

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x)) * self.scale


def _mlp_head(in_features: int, num_classes: int) -> nn.Module:
    """The head used with a frozen backbone: (GAP done by the backbone) + FC 512 + classes."""
    return nn.Sequential(
        nn.Linear(in_features, 512), nn.ReLU(inplace=True), nn.Dropout(0.2), nn.Linear(512, num_classes)
    )


def _adapt_first_conv(conv: nn.Conv2d, in_channels: int, small: bool) -> nn.Conv2d:
    """A first conv for `in_channels` (and a 3x3 stride-1 kernel for small tiles), keeping pretrained
    weights where shapes allow (grayscale: the RGB kernels summed)."""
    if small:
        new = nn.Conv2d(in_channels, conv.out_channels, 3, stride=1, padding=1, bias=False)
        return new  # a 7x7 kernel has no faithful 3x3 counterpart: learned afresh
    if in_channels == conv.in_channels:
        return conv
    new = nn.Conv2d(
        in_channels,
        conv.out_channels,
        cast(tuple[int, int], conv.kernel_size),
        cast(tuple[int, int], conv.stride),
        cast("str | tuple[int, int]", conv.padding),  # torch's stubs say tuple[int, ...]: a 2-D conv's are pairs
        bias=False,
    )
    with torch.no_grad():
        w = conv.weight.sum(dim=1, keepdim=True)
        new.weight.copy_(w.repeat(1, in_channels, 1, 1) / in_channels)
    return new


def _tv_weights(name: str):
    import torchvision.models as tvm

    return {
        "resnet18": tvm.ResNet18_Weights.IMAGENET1K_V1,
        "resnet50": tvm.ResNet50_Weights.IMAGENET1K_V2,
        "densenet121": tvm.DenseNet121_Weights.IMAGENET1K_V1,
    }[name]


def load_pretrained_state(name: str) -> dict:
    """ImageNet weights from the torchvision cache, downloading them when online. Never falls back silently."""
    weights = _tv_weights(name)
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(15)
    try:
        return weights.get_state_dict(progress=False, check_hash=True)
    except Exception as exc:  # URLError, timeouts, hash mismatch: all mean "no weights here"
        from torch.hub import get_dir

        fname = weights.url.rsplit("/", 1)[-1]
        raise HistoError(
            f"--pretrained: ImageNet weights for {name} are not cached and could not be downloaded "
            f"({type(exc).__name__}: {str(exc)[:120]}). Connect to the internet once, or copy {fname} into "
            f"{get_dir()}/checkpoints/, or train without --pretrained."
        ) from None
    finally:
        socket.setdefaulttimeout(old)


def _resnet(depth: str):
    def build(
        num_classes: int, in_channels: int, input_size: int, pretrained: bool = False, mlp_head: bool = False
    ) -> nn.Module:
        import torchvision.models as tvm

        model = getattr(tvm, depth)(weights=None)
        if pretrained:
            model.load_state_dict(load_pretrained_state(depth))
        small = input_size < SMALL_STEM_BELOW
        model.conv1 = _adapt_first_conv(model.conv1, in_channels, small)
        if small:
            model.maxpool = nn.Identity()
        feats = model.fc.in_features
        model.fc = _mlp_head(feats, num_classes) if mlp_head else nn.Linear(feats, num_classes)
        return model

    return build


def _densenet(
    num_classes: int, in_channels: int, input_size: int, pretrained: bool = False, mlp_head: bool = False
) -> nn.Module:
    import torchvision.models as tvm

    model = tvm.densenet121(weights=None)
    if pretrained:
        state = load_pretrained_state("densenet121")
        model.load_state_dict(_fix_densenet_keys(state))
    small = input_size < SMALL_STEM_BELOW
    model.features.conv0 = _adapt_first_conv(model.features.conv0, in_channels, small)
    if small:
        model.features.pool0 = nn.Identity()
    feats = model.classifier.in_features
    model.classifier = _mlp_head(feats, num_classes) if mlp_head else nn.Linear(feats, num_classes)
    return model


def _fix_densenet_keys(state: dict) -> dict:
    # torchvision's DenseNet checkpoints use old key names ("norm.1" for "norm1"); its own loader remaps them.
    import re

    pattern = re.compile(
        r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$"
    )
    out = {}
    for k, v in state.items():
        m = pattern.match(k)
        out[(m.group(1) + m.group(2)) if m else k] = v
    return out


def _custom(cls):
    def build(
        num_classes: int, in_channels: int, input_size: int, pretrained: bool = False, mlp_head: bool = False
    ) -> nn.Module:
        if pretrained:
            raise ConfigError(
                f"--pretrained: no ImageNet weights exist for {cls.__name__}; use resnet18, resnet50 or densenet121"
            )
        return cls(num_classes, in_channels, input_size)

    return build


# -- Grad-CAM layers -----------------------------------------------------------------------------------
# The deepest layer whose feature map is still at least 7x7 at the input size (falling back to an earlier one;
# a 1x1 map gives a flat CAM). Hook the ReLU after a conv, not the conv: Grad-CAM assumes non-negative
# activations, and on raw conv outputs it gives flat (all-zero) maps for ~15% of real PathMNIST tiles with a
# trained cnn3.


def _deepest_at_least_7(
    parent_of: Callable[[Any], Any], layers: tuple[str, ...], last_block: bool
) -> Callable[[Any, int], nn.Module]:
    """`layers` deepest first, each halving the side; below SMALL_STEM_BELOW the stem does not downsample."""

    def layer(model: nn.Module, input_size: int) -> nn.Module:
        small = input_size < SMALL_STEM_BELOW
        stride = 8 if small else 32  # of the deepest layer
        parent = parent_of(model)
        for name in layers:
            if input_size / stride >= 7 or name == layers[-1]:
                found = getattr(parent, name)
                return found[-1] if last_block else found
            stride //= 2
        raise AssertionError("unreachable")

    return layer


_RESNET_CAM = _deepest_at_least_7(lambda m: m, ("layer4", "layer3", "layer2"), last_block=True)
_DENSENET_CAM = _deepest_at_least_7(lambda m: m.features, ("denseblock4", "denseblock3", "denseblock2"), False)


def _torchvision(
    name: str, title: str, builder: Callable[..., nn.Module], head_attr: str, cam: Callable, description: str
) -> ArchSpec:
    """A torchvision architecture: 16-1024 px, pretrained backbone available."""
    return ArchSpec(name, title, 16, 1024, True, builder, head_attr, cam, description)


ARCHITECTURES: dict[str, ArchSpec] = {
    spec.name: spec
    for spec in (
        ArchSpec(
            name="simplecnn",
            title="SimpleCNN (2 conv, course project)",
            min_size=8,
            max_size=512,
            has_backbone=False,
            builder=_custom(SimpleCNN),
            head_attr="head",
            cam_layer=lambda m, size: m.features[4],  # ReLU after the second conv: input/2 per side
            description="Two 3x3 convs (10, 20 ch) + FC 100-50; fastest, good for 28 px.",
        ),
        ArchSpec(
            name="cnn3",
            title="CNN3 (3 conv blocks + FC 128)",
            min_size=8,
            max_size=512,
            has_backbone=False,
            builder=_custom(CNN3),
            head_attr="head",
            cam_layer=lambda m, size: m.features[2][2],  # third block's ReLU: input/4 per side (7x7 at 28 px)
            description="Three conv/BN/pool/dropout blocks + FC 128; a strong small baseline.",
        ),
        ArchSpec(
            name="resnet9",
            title="ResNet-9 (compact, DAWNBench style)",
            min_size=16,
            max_size=256,
            has_backbone=False,
            builder=_custom(ResNet9),
            head_attr="head",
            cam_layer=lambda m, size: m.features[3][0],  # last stage's conv block, before its pool: input/4
            description="0.4M parameters, 3 stages + 2 residual blocks; the CPU default for tiles up to 64 px.",
        ),
        _torchvision(
            "resnet18",
            "ResNet-18 (torchvision)",
            _resnet("resnet18"),
            "fc",
            _RESNET_CAM,
            "11M parameters; small-input stem below 64 px.",
        ),
        _torchvision(
            "resnet50",
            "ResNet-50 (torchvision)",
            _resnet("resnet50"),
            "fc",
            _RESNET_CAM,
            "25M parameters; slow on CPU.",
        ),
        _torchvision(
            "densenet121",
            "DenseNet-121 (torchvision)",
            _densenet,
            "classifier",
            _DENSENET_CAM,
            "8M parameters; slow on CPU.",
        ),
    )
}


# Which architecture a new run gets when none is chosen (`TrainConfig()` and `training.default_config`); the
# picks are measured in benchmarks/RESULTS.md. Architecture names are spelled here and in ARCHITECTURES only.
BASELINE_ARCH = "simplecnn"  # a bare TrainConfig(), before the recipe for a dataset and device
GPU_ARCH = "resnet18"  # CUDA
CPU_ARCH_SMALL, CPU_ARCH_LARGE = "resnet9", "cnn3"  # CPU: tiles up to CPU_SMALL_TILE_PX, and larger ones
CPU_SMALL_TILE_PX = 64  # larger tiles on CPU get CPU_ARCH_LARGE (ResNet-9 costs 12x more at 96 px)


def default_arch(device: str, size: int) -> str:
    """The architecture `training.default_config` picks for a resolved device ("cpu" or "cuda") and tile size."""
    if device == "cuda":
        return GPU_ARCH
    return CPU_ARCH_SMALL if size <= CPU_SMALL_TILE_PX else CPU_ARCH_LARGE


def get_arch(name: str) -> ArchSpec:
    if name not in ARCHITECTURES:
        raise ConfigError(f"--arch must be one of {', '.join(ARCHITECTURES)}, got {name!r}")
    return ARCHITECTURES[name]


def check_input(name: str, input_size: int, in_channels: int) -> None:
    spec = get_arch(name)
    if not spec.min_size <= int(input_size) <= spec.max_size:
        raise ConfigError(
            f"{name} takes tiles of {spec.min_size}..{spec.max_size} px, got {input_size} px (choose --size in that range)"
        )
    if in_channels not in (1, 3):
        raise ConfigError(f"{name}: tiles must have 1 or 3 channels, got {in_channels}")


class MeanEnsemble(nn.Module):
    """Networks of one architecture predicting together: forward gives log(mean_i softmax(member_i(x))), whose
    softmax is the members' mean probabilities (so argmax, TTA and reports see the mean)."""

    def __init__(self, members: list[nn.Module]):
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probs = torch.stack([torch.softmax(m(x).float(), dim=1) for m in self.members]).mean(0)
        return torch.log(probs.clamp(min=1e-12))


def first_member(model: nn.Module) -> nn.Module:
    """The network whose layers stand for `model` where one network's layers are needed (Grad-CAM's target
    layer, the feature vectors): an ensemble's first member, else the model itself."""
    return model.members[0] if isinstance(model, MeanEnsemble) else model


def build_model(
    name: str,
    num_classes: int,
    in_channels: int = 3,
    input_size: int = 28,
    *,
    pretrained: bool = False,
    mlp_head: bool = False,
    members: int = 1,
) -> nn.Module:
    """The architecture `name`; with `members` > 1 a MeanEnsemble of that many (a codivide run's model)."""
    spec = get_arch(name)
    check_input(name, input_size, in_channels)
    if num_classes < 2:
        raise ConfigError(f"a classifier needs at least 2 classes, got {num_classes}")
    if members > 1:
        return MeanEnsemble(
            [
                build_model(name, num_classes, in_channels, input_size, pretrained=pretrained, mlp_head=mlp_head)
                for _ in range(members)
            ]
        )
    return spec.builder(num_classes, in_channels, input_size, pretrained=pretrained, mlp_head=mlp_head)


def head_module(model: nn.Module, name: str) -> nn.Module:
    return getattr(model, get_arch(name).head_attr)


def set_backbone_trainable(model: nn.Module, name: str, trainable: bool) -> None:
    """Freeze (or unfreeze) everything but the classifier head. BatchNorm statistics follow model.train()."""
    head = head_module(model, name)
    head_ids = {id(p) for p in head.parameters()}
    for p in model.parameters():
        p.requires_grad = trainable or id(p) in head_ids


def cam_target_layer(model: nn.Module, name: str, input_size: int) -> nn.Module:
    """The registered Grad-CAM layer of architecture `name` in `model` (an ensemble: its first member's) at
    `input_size`."""
    return get_arch(name).cam_layer(first_member(model), int(input_size))


def register_architecture(spec: ArchSpec) -> ArchSpec:
    """Add an architecture to the registry (the CLI, the Train and Classify pages list it from then on)."""
    if spec.name in ARCHITECTURES:
        raise ConfigError(f"architecture {spec.name!r} is already registered")
    if not 1 <= spec.min_size <= spec.max_size:
        raise ConfigError(f"architecture {spec.name!r}: input sizes {spec.min_size}..{spec.max_size} are not a range")
    ARCHITECTURES[spec.name] = spec
    return spec
