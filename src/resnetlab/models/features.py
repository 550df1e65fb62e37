"""A ResNet or an HRNet as a backbone: the feature maps of its stem and stages instead of class scores."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..errors import ConfigError
from .freezing import freeze_modules, keep_frozen_in_eval
from .hrnet import NUM_BRANCHES, HRNet
from .resnet import ResNet, stem_and_stages


class FeatureInfo(list):
    """One dict per returned feature map (``num_chs``, ``reduction``, ``module``), read like timm's."""

    def channels(self) -> list[int]:
        return [info["num_chs"] for info in self]

    def reduction(self) -> list[int]:
        return [info["reduction"] for info in self]

    def module_name(self) -> list[str]:
        return [info["module"] for info in self]


class Backbone(nn.Module):
    """What every backbone here shares: frozen modules stay in eval mode through ``train()``, and with
    ``norm_eval`` every BatchNorm does, so small detection batches do not overwrite pretrained statistics."""

    norm_eval = False

    def freeze_as_told(self, classifier: nn.Module, frozen: list[nn.Module]) -> None:
        """Freeze ``frozen``, and what the classifier had frozen among the modules kept; then take its mode."""
        kept = {id(module) for module in self.modules()}
        inherited = [module for module in classifier.frozen_modules if id(module) in kept]
        freeze_modules(self, frozen + inherited)
        self.train(classifier.training)

    def train(self, mode: bool = True) -> Backbone:
        super().train(mode)
        if mode:
            keep_frozen_in_eval(self)
            if self.norm_eval:
                for module in self.modules():
                    if isinstance(module, (nn.BatchNorm2d, nn.SyncBatchNorm)):
                        module.eval()
        return self


class ResNetFeatures(Backbone):
    """The stem and stages of a ``ResNet``; ``forward`` returns the feature maps at ``out_indices``.

    Index 0 is the stem's activation, taken before the max-pool (stride 2 on ImageNet nets,
    as in timm and torchvision); 1..N are the outputs of ``layer1..layerN``. Stages past the
    deepest index and the head are dropped. The backbone holds the model's own modules (no
    copy) under the classifier's names (``conv1``, ``layer1.0.conv1``, ...), so the state dict
    of a classifier, less ``fc.*`` and the dropped stages, loads into it. For pretrained
    weights, load them into the classifier and wrap it: ``ResNetFeatures(model)``.

    ``frozen_stages=k`` freezes the stem and the first ``k`` stages (mmdet's meaning, with None
    for nothing frozen): no gradients, and kept in eval mode by ``train()``. ``norm_eval=True``
    keeps every BatchNorm in eval mode during ``train()``, so small detection batches do not
    overwrite pretrained running statistics.
    """

    def __init__(self, model: ResNet, out_indices: Sequence[int] | None = None,
                 frozen_stages: int | None = None, norm_eval: bool = False):
        super().__init__()
        num_stages = len(model.stage_names)
        out_indices = check_backbone_options(model.arch, num_stages, out_indices, frozen_stages)
        deepest = max(out_indices)

        self.out_indices = out_indices
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval
        self.feature_info = FeatureInfo(model.feature_info[i] for i in out_indices)

        # The classifier's own modules under the classifier's names. The max-pool is held apart
        # because the stem feature (feature_info[0]) is the activation before it; with
        # ``maxpool`` None, the borrowed ``forward_stem`` stops there.
        self.conv1, self.bn1, self.relu = model.conv1, model.bn1, model.relu
        self.grad_checkpointing = model.grad_checkpointing
        self.maxpool = None
        self.stem_pool = model.maxpool
        self.stage_names = model.stage_names[:deepest]
        for name in self.stage_names:
            self.add_module(name, getattr(model, name))
        # A pre-activation net's last stage output is only normalised by final_bn; the
        # classifier's head sees it that way, so the backbone returns it that way too.
        self.final_bn = model.final_bn if deepest == num_stages else None

        # Frozen here, or already frozen in the classifier (``model.freeze``): both stay frozen.
        self.freeze_as_told(model, stem_and_stages(self, frozen_stages) if frozen_stages is not None else [])

    # The classifier's forward pieces; they read only the modules kept above.
    forward_stem = ResNet.forward_stem
    forward_stem_activation = ResNet.forward_stem_activation
    forward_stage = ResNet.forward_stage
    forward_final_norm = ResNet.forward_final_norm
    set_grad_checkpointing = ResNet.set_grad_checkpointing
    stages = ResNet.stages

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.forward_stem(x)
        features = [x] if 0 in self.out_indices else []
        if self.stem_pool is not None:
            x = self.stem_pool(x)
        for index, stage in enumerate(self.stages, start=1):
            x = self.forward_stage(stage, x)
            if index in self.out_indices:
                features.append(self.forward_final_norm(x) if index == len(self.stages) else x)
        return features


class HRNetFeatures(Backbone):
    """An HRNet's stem, stages and the head's widening bottlenecks; ``forward`` returns the maps at
    ``out_indices``: 0 the stem's first activation (1/2), 1..4 the four branches as the head widens them
    (1/4 to 1/32), timm's HRNet ``features_only``. The head's merge and classifier are dropped, and the
    widening past the deepest index; every stage stays, since all four branches come out of the last one.

    Modules keep the classifier's names, so its state dict, less the dropped head, loads. ``frozen_stages``
    (the stem, then ``layer1`` and each transition with its stage) and ``norm_eval`` as ``ResNetFeatures``.
    """

    def __init__(self, model: HRNet, out_indices: Sequence[int] | None = None,
                 frozen_stages: int | None = None, norm_eval: bool = False):
        super().__init__()
        out_indices = check_backbone_options(model.arch, NUM_BRANCHES, out_indices, frozen_stages)
        self.out_indices = out_indices
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval
        self.feature_info = FeatureInfo(model.feature_info[i] for i in out_indices)
        self.grad_checkpointing = model.grad_checkpointing
        self.stage_names = model.stage_names
        for name in ("conv1", "bn1", "act1", "conv2", "bn2", "act2", "layer1",
                     *(f"transition{stage}" for stage in range(1, NUM_BRANCHES)), *model.stage_names):
            self.add_module(name, getattr(model, name))
        self.incre_modules = model.incre_modules[:max(out_indices)]

        self.freeze_as_told(model, HRNet.stem_and_stages(self, frozen_stages) if frozen_stages is not None else [])

    # The classifier's forward pieces; they read only the modules kept above.
    forward_stem_activation = HRNet.forward_stem_activation
    forward_layer1 = HRNet.forward_layer1
    forward_stage = staticmethod(HRNet.forward_stage)
    forward_branches = HRNet.forward_branches
    forward_widen = HRNet.forward_widen
    set_grad_checkpointing = HRNet.set_grad_checkpointing
    stages = HRNet.stages
    transitions = HRNet.transitions

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.forward_stem_activation(x)
        features = [x] if 0 in self.out_indices else []
        if max(self.out_indices) == 0:
            return features
        branches = self.forward_branches(self.act2(self.bn2(self.conv2(x))))
        return features + [map_ for index, map_ in enumerate(self.forward_widen(branches), start=1)
                           if index in self.out_indices]



def backbone_of(model: ResNet | HRNet, out_indices: Sequence[int] | None = None, frozen_stages: int | None = None,
                norm_eval: bool = False) -> ResNetFeatures | HRNetFeatures:
    """The backbone of a classifier: ``HRNetFeatures`` for an HRNet, ``ResNetFeatures`` for a ResNet."""
    backbone = HRNetFeatures if isinstance(model, HRNet) else ResNetFeatures
    return backbone(model, out_indices, frozen_stages, norm_eval)


def check_backbone_options(arch: str, num_stages: int, out_indices: Sequence[int] | None,
                           frozen_stages: int | None) -> tuple[int, ...]:
    """Validate the options of a backbone with ``num_stages`` stages; return ``out_indices`` resolved.

    Needs only the architecture's stage count, so ``create_model`` calls it before building.
    """
    valid = f"{arch} has features 0 (the stem) to {num_stages} (its last stage)"
    if out_indices is None:
        out_indices = tuple(range(1, num_stages + 1))
    out_indices = tuple(out_indices)
    if not out_indices:
        raise ConfigError(f"out_indices is empty; give at least one feature index: {valid}")
    if not all(_is_int(i) for i in out_indices):
        raise ConfigError(f"out_indices must be integers, got {out_indices!r}; {valid}")
    outside = [i for i in out_indices if not 0 <= i <= num_stages]
    if outside:
        raise ConfigError(f"out_indices {outside} do not exist: {valid}")
    if list(out_indices) != sorted(set(out_indices)):
        raise ConfigError(f"out_indices must increase without repeats, e.g. (1, 2, 3), "
                          f"got {out_indices!r}")
    deepest = max(out_indices)
    if frozen_stages is not None and not (_is_int(frozen_stages) and 0 <= frozen_stages <= deepest):
        raise ConfigError(f"frozen_stages must be None (nothing frozen) or 0 (the stem) to {deepest} "
                          f"(the stem and every kept stage), got {frozen_stages!r}")
    return out_indices


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
