"""Load weights into a model from any source, and save them with the metadata to rebuild it."""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import re
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path

import safetensors.torch
import torch
from safetensors import SafetensorError, safe_open

from ..atomic import atomic_path
from ..errors import CheckpointError
from ..preprocessing import Preprocessing
from ..file_kinds import SAFETENSORS, TORCH_CHECKPOINT, looks_like
from .checkpoint import WeightsSource, read_state_dict, refuse_folder
from .hrnet import NUM_BRANCHES, HRNet, HRNetConfig
from .layouts import TIMM_HRNET, detect_layout, to_resnetlab_layout
from ..pretrained.catalog import PretrainedWeights, is_pretrained_tag
from ..pretrained.store import fetch
from .registry import build_model, create_model
from .resnet import ResNet, ResNetConfig

logger = logging.getLogger("resnetlab")

METADATA_KEY = "resnetlab"  # safetensors header key, ONNX metadata_props key, TorchScript extra file "resnetlab.json"
_FORMAT = "resnetlab.weights/1"
# The metadata's "family" -> the config it holds; files written before HRNet name none and hold a ResNet.
_CONFIGS = {"resnet": ResNetConfig, "hrnet": HRNetConfig}


@dataclass
class LoadReport:
    """What ``load_weights`` did beyond a plain strict load."""

    layout: str  # the key layout the weights came in: "torchvision", "timm-resnetv2" or "timm-hrnet"
    head_reinitialized: bool = False
    adapted_in_chans: tuple[int, int] | None = None  # (checkpoint's, model's) input channels
    messages: list[str] = field(default_factory=list)


def load_weights(model: ResNet | HRNet, source: WeightsSource) -> LoadReport:
    """Load ``source`` into ``model`` strictly, converting known layouts on the way.

    ``source`` is a ``.pth``/``.pt``/``.safetensors`` path, a file URL (read in place), an
    http(s) URL (downloaded once into the torch hub cache), or a state dict. torchvision, timm and
    resnetlab layouts are recognised. Two differences are repaired, with a message:
    a different class count re-initialises the head (fine-tuning), and a different
    number of input channels adapts conv1's pretrained filters. Anything else that does
    not fit raises ``CheckpointError`` naming the keys.
    """
    state, layout = to_resnetlab_layout(read_state_dict(source), target_keys=model.state_dict().keys())
    report = LoadReport(layout=layout)
    checkpoint = describe_architecture(state)  # before the head and stem are fitted to the model
    _fit_head(model, state, report)
    expected = model.state_dict()
    _fit_input_channels(state, expected, report)
    _check_fit(model, state, expected, source, checkpoint)
    model.load_state_dict(state, strict=True)
    for message in report.messages:
        logger.warning(message)
    return report


def classifier_name(model: ResNet | HRNet) -> str:
    """The classifier's module name: timm's ``classifier`` in an HRNet, torchvision's ``fc`` in a ResNet."""
    return "classifier" if isinstance(model, HRNet) else "fc"


def _fit_head(model: ResNet | HRNet, state: dict, report: LoadReport) -> None:
    head = classifier_name(model)
    weight = state.get(f"{head}.weight")
    if weight is None or weight.ndim != 2:
        return
    target = getattr(getattr(model, head), "weight", None)
    if target is None:
        report.messages.append("the model has no classifier (num_classes=0): the checkpoint's head was dropped")
    elif weight.shape[1] == target.shape[1] and weight.shape[0] != target.shape[0]:
        report.messages.append(f"the checkpoint has {weight.shape[0]} classes and the model "
                               f"{target.shape[0]}: the classifier head was re-initialised and needs fine-tuning")
        report.head_reinitialized = True
        model.reset_classifier(target.shape[0])
    else:
        return
    state.pop(f"{head}.weight")
    state.pop(f"{head}.bias", None)
    state.update({f"{head}.{key}": value for key, value in getattr(model, head).state_dict().items()})


def _fit_input_channels(state: dict, expected: dict, report: LoadReport) -> None:
    key = "conv1.0.weight" if "conv1.0.weight" in expected else "conv1.weight"  # a deep stem's first conv
    weight, target = state.get(key), expected.get(key)
    if weight is None or target is None or weight.shape == target.shape:
        return
    if weight.shape[0] != target.shape[0] or weight.shape[2:] != target.shape[2:]:
        return  # a different stem altogether: reported as a mismatch
    have, want = weight.shape[1], target.shape[1]
    if want == 1:
        adapted = weight.sum(dim=1, keepdim=True)
    else:
        # Cycle the pretrained filters over the new channels and rescale so that the
        # expected activation magnitude stays that of the original input.
        adapted = weight.repeat(1, math.ceil(want / have), 1, 1)[:, :want] * (have / want)
    state[key] = adapted
    report.adapted_in_chans = (have, want)
    report.messages.append(f"conv1 was adapted from {have} to {want} input channels "
                           "(pretrained filters summed or repeated and rescaled)")


def _check_fit(model: ResNet, state: dict, expected: dict, source: WeightsSource, checkpoint: str) -> None:
    # Old torchvision files predate BN's num_batches_tracked; PyTorch fills it in.
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    mismatched = [f"{k} {tuple(state[k].shape)} vs {tuple(expected[k].shape)}"
                  for k in state if k in expected and state[k].shape != expected[k].shape]
    if not (missing or unexpected or mismatched):
        return
    problems = []
    for label, keys in (("missing", _modules(missing)), ("unexpected", _modules(unexpected)),
                        ("shape mismatch (checkpoint vs model)", mismatched)):
        if keys:
            shown = ", ".join(keys[:6]) + (f" and {len(keys) - 6} more" if len(keys) > 6 else "")
            problems.append(f"{label}: {shown}")
    where = "the state dict" if isinstance(source, dict) else os.fspath(source)
    raise CheckpointError(
        f"{where} does not fit {model.arch}: it looks like {checkpoint}, "
        f"the model is {describe_architecture(expected)}. " + "; ".join(problems))


def _modules(keys: list[str]) -> list[str]:
    """The layers ``keys`` belong to, in order: ``layer1.3.bn1`` once, not each of its five tensors."""
    return list(dict.fromkeys(key.rsplit(".", 1)[0] for key in keys))


def describe_architecture(state: dict[str, torch.Tensor]) -> str:
    """A one-line description of the network a state dict belongs to, read from its keys."""
    if detect_layout(state) == TIMM_HRNET:
        return _describe_hrnet(state)
    blocks: dict[int, set[int]] = {}
    for key in state:
        match = re.match(r"layer(\d+)\.(\d+)\.", key)
        if match:
            blocks.setdefault(int(match[1]), set()).add(int(match[2]))
    layers = [len(blocks[stage]) for stage in sorted(blocks)]
    kind = "bottleneck" if any(re.match(r"layer\d+\.\d+\.conv3\.", k) for k in state) else "basic-block"
    if "final_bn.weight" in state:
        kind = "pre-activation " + kind
    if any(".se." in k for k in state):
        kind = "SE " + kind
    parts = [f"a {kind} ResNet with blocks {layers}"]
    if "fc.weight" in state:
        parts.append(f"{state['fc.weight'].shape[0]} classes")
    if "conv1.weight" in state:
        stem = state["conv1.weight"].shape
        parts.append(f"{stem[-1]}x{stem[-1]} stem of width {stem[0]}")
    elif "conv1.6.weight" in state:
        parts.append(f"deep 3x3 stem of width {state['conv1.6.weight'].shape[0]}")
    return ", ".join(parts)


def _describe_hrnet(state: dict[str, torch.Tensor]) -> str:
    # Each branch's width is the in-channels of the head's bottleneck on it.
    widths = [state[f"incre_modules.{i}.0.conv1.weight"].shape[1] for i in range(NUM_BRANCHES)
              if f"incre_modules.{i}.0.conv1.weight" in state]
    parts = [f"an HRNet with branch widths {widths}"]
    if "classifier.weight" in state:
        parts.append(f"{state['classifier.weight'].shape[0]} classes")
    return ", ".join(parts)


def save_weights(model: ResNet | HRNet, path: str | os.PathLike, *, class_names: list[str] | None = None,
                 preprocessing: Preprocessing | None = None) -> Path:
    """Write ``path`` (``.safetensors``) and a JSON of metadata beside it, both atomically.

    The metadata (architecture, full config, class names, preprocessing) is also stored in
    the safetensors header, so ``load_model(path)`` rebuilds the model from the one file.
    """
    path = Path(path)
    if path.suffix != ".safetensors":
        raise CheckpointError(f"save_weights writes safetensors; give a path ending in .safetensors, "
                              f"not {path.name}")
    metadata = model_metadata(model, class_names, preprocessing)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:  # written by Python: a full disk is an OSError, not the library's own error
        tmp.write_bytes(safetensors.torch.save(tensors, metadata={METADATA_KEY: json.dumps(metadata)}))
    with atomic_path(path.with_suffix(".json")) as tmp:
        tmp.write_text(json.dumps(metadata, indent=2) + "\n")
    return path


def model_metadata(model: ResNet | HRNet, class_names: list[str] | None = None,
                   preprocessing: Preprocessing | None = None) -> dict:
    """What travels with a model's weights or exported graph: architecture, classes, preprocessing."""
    class_names = class_names if class_names is not None else model.class_names
    if class_names is not None and len(class_names) != model.config.num_classes:
        raise CheckpointError(f"{len(class_names)} class names given for a model with "
                              f"{model.config.num_classes} classes")
    return {
        "format": _FORMAT,
        "resnetlab_version": version("resnetlab"),
        "arch": model.arch,
        "family": next(family for family, config in _CONFIGS.items() if isinstance(model.config, config)),
        "config": model.config.to_dict(),
        "class_names": list(class_names) if class_names is not None else None,
        "preprocessing": dataclasses.asdict(preprocessing or model.preprocessing),
    }


def read_metadata(path: str | os.PathLike) -> dict:
    """The metadata ``save_weights`` stored with a ``.safetensors`` file."""
    path = Path(path)
    refuse_folder(path, ".safetensors file", (".safetensors",))
    if not path.is_file():
        raise CheckpointError(f"weights file {path} does not exist")
    kind = looks_like(path)
    if kind != SAFETENSORS:
        raise CheckpointError(_not_safetensors(path, kind))
    try:
        with safe_open(path, framework="pt") as reader:
            header = reader.metadata() or {}
    except (SafetensorError, OSError) as error:
        raise CheckpointError(f"{path} is not a readable safetensors file (truncated or corrupt?): "
                              f"{error}") from error
    if METADATA_KEY not in header:
        raise CheckpointError(f"{path} carries no resnetlab metadata; build the model with "
                              "create_model(...) and use load_weights(model, path) instead")
    return json.loads(header[METADATA_KEY])


def _not_safetensors(path: Path, kind: str) -> str:
    message = f"{path} looks like {kind}, not a .safetensors file written by resnetlab train or save_weights"
    if kind != TORCH_CHECKPOINT:
        return message
    return (f"{message}; to use its state dict: model = create_model(name); load_weights(model, '{path}'); "
            "save_weights(model, 'model.safetensors')")


def config_from_metadata(metadata: dict, path: str | os.PathLike) -> ResNetConfig | HRNetConfig:
    """The architecture's config that ``model_metadata`` wrote (into ``path``)."""
    family = metadata.get("family", "resnet")
    if family not in _CONFIGS:
        raise CheckpointError(f"{path} holds a {family!r} network, which this resnetlab ({version('resnetlab')}) "
                              f"does not build; it builds {', '.join(_CONFIGS)}")
    try:
        return _CONFIGS[family](**metadata["config"])
    except TypeError as error:
        raise CheckpointError(f"{path} was saved by an incompatible resnetlab "
                              f"({metadata.get('resnetlab_version')}): {error}") from error


def load_pretrained(model: ResNet | HRNet, weights: PretrainedWeights) -> LoadReport:
    """Load a pretrained tag's checked file into ``model``, with the tag's preprocessing and class names."""
    report = load_weights(model, fetch(weights.tag))
    model.preprocessing = weights.eval_preprocessing
    if not report.head_reinitialized and model.config.num_classes == weights.num_classes:
        model.class_names = weights.class_names()
    if weights.license and "-nc" in weights.license:
        logger.warning(f"{weights.tag} is licensed {weights.license}: non-commercial use only")
    return report


def load_model(path: str | os.PathLike) -> ResNet | HRNet:
    """Rebuild the model saved by ``save_weights`` (architecture, weights, class names, preprocessing),
    or a pretrained tag's (``load_model("resnet50.a1_in1k")``) when ``path`` names no file."""
    if is_pretrained_tag(path):
        return create_model(os.fspath(path), pretrained=True)
    metadata = read_metadata(path)
    model = build_model(config_from_metadata(metadata, path), arch=metadata["arch"])
    load_weights(model, path)
    model.class_names = metadata["class_names"]
    model.preprocessing = Preprocessing(**metadata["preprocessing"])
    return model
