"""HRNet (Wang et al., "Deep High-Resolution Representation Learning", TPAMI 2020) under timm's names.

Not a linear stack of stages, so a class of its own: four parallel branches, at 1/4 to 1/32 of the
input's side, exchange information again and again. Module names are timm's (``transition1``,
``stage2.0.branches.0.0.conv1``, ``incre_modules``, ``classifier``, ...), so timm's state dicts load
unchanged; the residual blocks are resnetlab's own, which share timm's names.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..typed_fields import check_types
from ..errors import ConfigError
from ..preprocessing import IMAGENET, Preprocessing
from .blocks import BasicBlock, Bottleneck, conv1x1
from .freezing import freeze_modules, keep_frozen_in_eval
from .grad_checkpointing import checkpointed
from .resnet import intermediate_indices

NUM_BRANCHES = 4  # the classification head widens and merges exactly four
STEM_CHANNELS = 64  # the second stem conv's width in every HRNet
# The head's bottleneck widths per branch: its blocks output 128, 256, 512, 1024 channels.
HEAD_WIDTHS = (32, 64, 128, 256)
NUM_FEATURES = 2048  # the head's last 1x1 conv: what the classifier reads


@dataclass(frozen=True)
class HRNetConfig:
    """Everything that defines an HRNet. Saved beside weights, so it must stay plain data.

    Stage 1 is bottlenecks on one branch at 1/4 resolution. Each later stage adds a branch at half
    the resolution of the last and runs a chain of multi-resolution modules: basic blocks on every
    branch, then a fusion where each branch receives the sum of all of them.
    """

    widths: tuple[int, ...] = (18, 36, 72, 144)  # branch widths, highest resolution first: the W of hrnet_wW
    modules: tuple[int, ...] = (1, 4, 3)  # multi-resolution modules in stages 2, 3 and 4
    blocks: tuple[int, ...] = (4, 4, 4)  # basic blocks on each branch of a module, in stages 2, 3 and 4
    stage1_blocks: int = 4  # bottlenecks of stage 1
    stage1_channels: int = 64  # their inner width; they output 4x as many
    stem_width: int = 64  # the first 3x3/2 conv's width (the second's is always 64)
    head_conv_bias: bool = True  # on the head's strided and final convs; the SSLD (Paddle) weights have none
    zero_init_residual: bool = False  # zero the last BN of each residual block so it starts as identity
    in_chans: int = 3
    num_classes: int = 1000

    def __post_init__(self) -> None:
        check_types(HRNetConfig, vars(self))
        for name in ("widths", "modules", "blocks"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        self._validate()

    def _validate(self) -> None:
        if len(self.widths) != NUM_BRANCHES or min(self.widths) < 1:
            raise ConfigError(f"widths needs {NUM_BRANCHES} positive branch widths, highest resolution first, "
                              f"not {list(self.widths)}")
        for name in ("modules", "blocks"):
            values = getattr(self, name)
            if len(values) != NUM_BRANCHES - 1 or min(values) < 1:
                raise ConfigError(f"{name} needs {NUM_BRANCHES - 1} positive counts, one for each of stages 2 to "
                                  f"{NUM_BRANCHES}, not {list(values)}")
        for name in ("stage1_blocks", "stage1_channels", "stem_width", "in_chans"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, not {getattr(self, name)}")
        if self.num_classes < 0:
            raise ConfigError(f"num_classes must be 0 or more (0 removes the classifier), not {self.num_classes}")

    @property
    def block(self) -> str:
        """The residual blocks, as the model tables name them: stage 1's, then the branches'."""
        return "bottleneck, basic"

    @property
    def layers(self) -> tuple[int, ...]:
        """Residual blocks per stage, every branch and module counted (the head's four not)."""
        return (self.stage1_blocks, *(modules * (stage + 2) * blocks for stage, (modules, blocks)
                                      in enumerate(zip(self.modules, self.blocks))))

    @property
    def preprocessing(self) -> Preprocessing:
        return IMAGENET

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def conv_bn(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, relu: bool = True,
            bias: bool = False) -> nn.Sequential:
    layers = [nn.Conv2d(in_channels, out_channels, kernel_size, stride, kernel_size // 2, bias=bias),
              nn.BatchNorm2d(out_channels)]
    return nn.Sequential(*layers, nn.ReLU(inplace=True)) if relu else nn.Sequential(*layers)


def bottlenecks(in_channels: int, width: int, count: int) -> nn.Sequential:
    """``count`` bottlenecks of inner width ``width`` at stride 1, the first projecting its shortcut."""
    out_channels = width * Bottleneck.expansion
    shortcut = None if in_channels == out_channels else \
        nn.Sequential(conv1x1(in_channels, out_channels), nn.BatchNorm2d(out_channels))
    return nn.Sequential(Bottleneck(in_channels, width, out_channels, shortcut=shortcut),
                         *(Bottleneck(out_channels, width, out_channels) for _ in range(count - 1)))


def run_blocks(blocks: nn.Sequential, x: torch.Tensor, checkpointing: bool) -> torch.Tensor:
    """``blocks(x)``; with ``checkpointing`` in a pass that records gradients, block by block recomputed."""
    if not (checkpointing and torch.is_grad_enabled()):
        return blocks(x)
    for block in blocks:
        x = checkpointed(block, x)
    return x


def transition(before: tuple[int, ...], after: tuple[int, ...]) -> nn.ModuleList:
    """From one stage's branches to the next's: a 3x3 conv where a branch changes width, and the new
    branch made from the lowest-resolution one by a 3x3/2 conv (timm nests it one level deeper)."""
    kept = [conv_bn(b, a, 3) if b != a else nn.Identity() for b, a in zip(before, after)]
    return nn.ModuleList([*kept, nn.Sequential(conv_bn(before[-1], after[len(before)], 3, stride=2))])


def fusion_path(widths: tuple[int, ...], source: int, target: int) -> nn.Module:
    """What branch ``source`` contributes to branch ``target``'s sum, at ``target``'s width."""
    if source == target:
        return nn.Identity()
    if source > target:  # from a lower resolution: a 1x1 conv here, nearest upsampling in the forward pass
        return nn.Sequential(conv1x1(widths[source], widths[target]), nn.BatchNorm2d(widths[target]))
    # From a higher resolution: one 3x3/2 conv per halving; the last one widens, and its ReLU comes after the sum.
    halvings = target - source
    return nn.Sequential(*(conv_bn(widths[source], widths[target] if last else widths[source], 3, stride=2,
                                   relu=not last)
                           for last in (step == halvings - 1 for step in range(halvings))))


class MultiResolutionModule(nn.Module):
    """Basic blocks on each branch, then the fusion: each branch becomes the ReLU of the sum of every
    branch brought to its resolution and width."""

    def __init__(self, widths: tuple[int, ...], num_blocks: int):
        super().__init__()
        self.branches = nn.ModuleList(nn.Sequential(*(BasicBlock(width, width, width) for _ in range(num_blocks)))
                                      for width in widths)
        self.fuse_layers = nn.ModuleList(nn.ModuleList(fusion_path(widths, source, target)
                                                       for source in range(len(widths)))
                                         for target in range(len(widths)))
        self.fuse_act = nn.ReLU()  # not in place: the identity path hands it a branch's own output
        self.grad_checkpointing = False  # set by HRNet.set_grad_checkpointing

    def forward(self, branches: list[torch.Tensor]) -> list[torch.Tensor]:
        branches = [run_blocks(blocks, x, self.grad_checkpointing) for blocks, x in zip(self.branches, branches)]
        fused = []
        for target, paths in enumerate(self.fuse_layers):
            total = None
            for source, path in enumerate(paths):
                y = path(branches[source])
                if source > target:
                    # To the target's size rather than by a fixed factor (timm's), so that sides that do not
                    # halve evenly work too; where they do, it is the same nearest upsampling.
                    y = F.interpolate(y, size=branches[target].shape[-2:], mode="nearest")
                total = y if total is None else total + y
            fused.append(self.fuse_act(total))
        return fused


class HRNet(nn.Module):
    """The high-resolution network for classification: the stem, four stages, and timm's head, which
    widens each branch with a bottleneck and merges them top-down by strided convs into 2048 channels
    at 1/32, then pools. The same face as ``ResNet``: ``forward_features``, ``forward_head``,
    ``reset_classifier``, ``feature_info``, ``freeze``, ``set_grad_checkpointing``.
    """

    def __init__(self, config: HRNetConfig, arch: str = "custom"):
        super().__init__()
        self.config = config
        self.arch = arch  # the registry name it was built from, saved with its weights
        self.preprocessing = config.preprocessing
        self.class_names: list[str] | None = None
        self.frozen_modules: list[nn.Module] = []  # see freeze()
        self.grad_checkpointing = False  # see set_grad_checkpointing()

        self.conv1 = nn.Conv2d(config.in_chans, config.stem_width, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(config.stem_width)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(config.stem_width, STEM_CHANNELS, 3, stride=2, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(STEM_CHANNELS)
        self.act2 = nn.ReLU(inplace=True)
        self.layer1 = bottlenecks(STEM_CHANNELS, config.stage1_channels, config.stage1_blocks)

        widths = (config.stage1_channels * Bottleneck.expansion,)
        self.stage_names: list[str] = []
        for stage in range(2, NUM_BRANCHES + 1):
            new_widths = config.widths[:stage]
            self.add_module(f"transition{stage - 1}", transition(widths, new_widths))
            self.add_module(f"stage{stage}", nn.Sequential(*(
                MultiResolutionModule(new_widths, config.blocks[stage - 2]) for _ in range(config.modules[stage - 2]))))
            self.stage_names.append(f"stage{stage}")
            widths = new_widths

        head_channels = [width * Bottleneck.expansion for width in HEAD_WIDTHS]
        self.incre_modules = nn.ModuleList(bottlenecks(branch, width, 1)
                                           for branch, width in zip(config.widths, HEAD_WIDTHS))
        self.downsamp_modules = nn.ModuleList(conv_bn(high, low, 3, stride=2, bias=config.head_conv_bias)
                                              for high, low in zip(head_channels, head_channels[1:]))
        self.final_layer = conv_bn(head_channels[-1], NUM_FEATURES, 1, bias=config.head_conv_bias)
        self.num_features = NUM_FEATURES
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.classifier: nn.Module = nn.Linear(NUM_FEATURES, config.num_classes) if config.num_classes \
            else nn.Identity()

        # timm's taps: the first stem activation, then each branch as the head widened it.
        self.feature_info: list[dict] = [dict(num_chs=config.stem_width, reduction=2, module="act1")] + [
            dict(num_chs=channels, reduction=4 * 2 ** i, module=f"incre_modules.{i}")
            for i, channels in enumerate(head_channels)]
        self._init_weights()

    def _init_weights(self) -> None:
        if next(self.parameters()).is_meta:
            return  # built on the meta device to count MACs or shapes: there are no values to set
        # As timm: He initialisation (fan_out) for every conv; BN starts as identity.
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        if self.config.zero_init_residual:
            for module in self.modules():
                if isinstance(module, (BasicBlock, Bottleneck)):
                    nn.init.zeros_(module.last_residual_layer.weight)

    @property
    def stages(self) -> list[nn.Sequential]:
        return [getattr(self, name) for name in self.stage_names]

    @property
    def transitions(self) -> list[nn.ModuleList]:
        return [getattr(self, f"transition{stage}") for stage in range(1, NUM_BRANCHES)]

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each residual block's activations in the backward pass instead of keeping them
        (timm's name; timm's HRNet has none). BN running statistics are not stepped twice."""
        self.grad_checkpointing = enable
        for module in self.modules():
            if isinstance(module, MultiResolutionModule):
                module.grad_checkpointing = enable

    def forward_stem_activation(self, x: torch.Tensor) -> torch.Tensor:
        """The stem's first conv-BN-ReLU (1/2): feature 0 of ``features_only`` and ``forward_intermediates``."""
        return self.act1(self.bn1(self.conv1(x)))

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        x = self.forward_stem_activation(x)
        return self.act2(self.bn2(self.conv2(x)))

    def forward_layer1(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [run_blocks(self.layer1, x, self.grad_checkpointing)]

    @staticmethod
    def forward_stage(transition_layers: nn.ModuleList, stage: nn.Sequential,
                      branches: list[torch.Tensor]) -> list[torch.Tensor]:
        branches = [layer(x) for layer, x in zip(transition_layers, branches)] + [transition_layers[-1](branches[-1])]
        return stage(branches)

    def forward_branches(self, x: torch.Tensor) -> list[torch.Tensor]:
        """From the stem's output to the last stage's four branches, 1/4 to 1/32."""
        branches = self.forward_layer1(x)
        for transition_layers, stage in zip(self.transitions, self.stages):
            branches = self.forward_stage(transition_layers, stage, branches)
        return branches

    def forward_widen(self, branches: list[torch.Tensor]) -> list[torch.Tensor]:
        """Each branch (as many as there are ``incre_modules``) widened by the head's bottleneck."""
        return [run_blocks(incre, x, self.grad_checkpointing) for incre, x in zip(self.incre_modules, branches)]

    def forward_merge(self, widened: list[torch.Tensor]) -> torch.Tensor:
        """The head's merge: each widened branch added to the higher ones brought down to its resolution."""
        y = None
        for i, x in enumerate(widened):
            y = x if y is None else x + self.downsamp_modules[i - 1](y)
        return self.final_layer(y)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_merge(self.forward_widen(self.forward_branches(self.forward_stem(x))))

    def forward_intermediates(self, x: torch.Tensor, indices: int | Sequence[int] | None = None, norm: bool = False,
                              stop_early: bool = False, output_fmt: str = "NCHW", intermediates_only: bool = False,
                              ) -> list[torch.Tensor] | tuple[torch.Tensor | list[torch.Tensor], list[torch.Tensor]]:
        """timm's interface: the features and the maps at ``indices``: 0 the stem's first activation (1/2),
        1..4 the four branches as the head widens them (1/4 to 1/32; timm's ``features_only`` taps).

        The branches all come out of the last stage together, so ``stop_early`` saves only the widening
        past the deepest index, and the features are then the branches, unmerged (as timm). An HRNet has
        no final norm: ``norm`` changes nothing.
        """
        if output_fmt != "NCHW":
            raise ConfigError(f"output_fmt {output_fmt!r} is not available; HRNet feature maps are NCHW")
        taken = intermediate_indices(NUM_BRANCHES + 1, indices)
        x = self.forward_stem_activation(x)
        intermediates = [x] if 0 in taken else []
        if stop_early and max(taken) == 0:
            return intermediates if intermediates_only else (x, intermediates)
        branches = self.forward_branches(self.act2(self.bn2(self.conv2(x))))
        widened = self.forward_widen(branches[:max(taken)] if stop_early else branches)
        intermediates += [map_ for index, map_ in enumerate(widened, start=1) if index in taken]
        if intermediates_only:
            return intermediates
        return (self.forward_merge(widened) if len(widened) == NUM_BRANCHES else branches), intermediates

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = torch.flatten(self.global_pool(x), 1)
        return x if pre_logits else self.classifier(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def stem_and_stages(self, stages: int) -> list[nn.Module]:
        """The stem and the first ``stages`` stages (stage 1 is ``layer1``; stage k a transition and a stage)."""
        frozen = [self.conv1, self.bn1, self.conv2, self.bn2]
        if stages >= 1:
            frozen.append(self.layer1)
        for transition_layers, stage in list(zip(self.transitions, self.stages))[:max(stages - 1, 0)]:
            frozen += [transition_layers, stage]
        return frozen

    def freeze(self, stages: int | None = None, batch_norm: bool = False) -> None:
        """Stop learning in the stem and the first ``stages`` stages (of 4), and/or in every BN layer.

        Frozen modules get no gradients and stay in eval mode through ``train()``; the head always learns.
        """
        if stages is not None and not 0 <= stages <= NUM_BRANCHES:
            raise ConfigError(f"cannot freeze {stages} stages: {self.arch} has {NUM_BRANCHES}")
        frozen = self.stem_and_stages(stages) if stages is not None else []
        freeze_modules(self, frozen, batch_norm)

    def train(self, mode: bool = True) -> HRNet:
        super().train(mode)
        keep_frozen_in_eval(self)
        return self

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the head's classifier with a fresh one (0 removes it: the model returns embeddings)."""
        self.classifier = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()
        self.config = dataclasses.replace(self.config, num_classes=num_classes)


def _w(width: int, **options) -> HRNetConfig:
    return HRNetConfig(widths=tuple(width * 2 ** i for i in range(NUM_BRANCHES)), **options)


# timm's eleven (timm.models.hrnet): the small ones have fewer modules and blocks; the SSLD ones are
# w18 and w48 as distilled by PaddleClas, whose head convs have no bias.
HRNET_MODELS: dict[str, HRNetConfig] = {
    "hrnet_w18_small": _w(16, modules=(1, 1, 1), blocks=(2, 2, 2), stage1_blocks=1, stage1_channels=32),
    "hrnet_w18_small_v2": _w(18, modules=(1, 3, 2), blocks=(2, 2, 2), stage1_blocks=2),
    "hrnet_w18": _w(18),
    "hrnet_w18_ssld": _w(18, head_conv_bias=False),
    "hrnet_w30": _w(30),
    "hrnet_w32": _w(32),
    "hrnet_w40": _w(40),
    "hrnet_w44": _w(44),
    "hrnet_w48": _w(48),
    "hrnet_w48_ssld": _w(48, head_conv_bias=False),
    "hrnet_w64": _w(64),
}
