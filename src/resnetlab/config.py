"""The run's configuration: plain dataclasses, validated on construction.

Each builder receives only its own part (``build_loaders`` takes a ``DataConfig``), so a
part can be checked, saved with the run's results and compared on its own.
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import os
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import yaml

from .errors import ConfigError
from .typed_fields import check_types

CACHE_MODES = ("auto", "memory", "none")
AUGMENT_PRESETS = ("auto", "imagenet", "cifar", "none")
AUTO_AUGMENT_POLICIES = (None, "randaugment", "autoaugment-imagenet", "autoaugment-cifar10")
BAD_IMAGE_POLICIES = ("skip", "error")


@dataclass(frozen=True)
class DataConfig:
    """Where the images come from, how they are augmented and batched."""

    # An image folder (DIR/train/<class>/* beside DIR/val/<class>/* or DIR/test/<class>/*),
    # "cifar10" (the official archive, downloaded once), or a path to cifar-10-python.tar.gz.
    data: str = "cifar10"
    download_dir: str | None = None  # where "cifar10" looks for and saves its archive; None: $TORCH_HOME/datasets
    val_split: str | None = None  # folder beside train/ to evaluate on; None: "val", else "test"
    max_per_class: int | None = None  # first N images of each class in each split (quick runs); None: all
    batch_size: int = 128  # images per batch on each process
    # DataLoader processes. None: 0 when cached images are augmented a whole batch at a time
    # (cheaper than shipping batches between processes), else one per core, at most 8.
    workers: int | None = None
    # "memory": decode every image once into a uint8 tensor and augment whole batches;
    # "none": decode per item in the workers; "auto": memory for CIFAR-sized images (<= 64 px).
    cache: str = "auto"
    # "imagenet": random-resized crop + flip; "cifar": shift by up to 4 px + flip;
    # "none": the evaluation transform only (data augmented beforehand, or exact comparisons);
    # "auto": cifar for CIFAR-sized images, else imagenet. Evaluation always resizes and
    # centre-crops as the model's preprocessing says.
    augment: str = "auto"
    color_jitter: float = 0.0  # brightness, contrast and saturation strength (0.4 is common); 0: off
    auto_augment: str | None = None  # "randaugment" (2 ops, magnitude 9), "autoaugment-imagenet" or "-cifar10"
    mixup_alpha: float = 0.0  # Beta(alpha, alpha) mixing of image pairs (0.2 is common); 0: off
    cutmix_alpha: float = 0.0  # Beta(alpha, alpha) area of pasted patches (1.0 is common); 0: off
    bad_images: str = "skip"  # unreadable files: "skip" lists and leaves them out, "error" stops
    input_size: int | None = None  # crop side fed to the model, pixels; None: the model's preprocessing

    def __post_init__(self) -> None:
        def fail(message: str) -> None:
            raise ConfigError(message)

        def choose(name: str, value, choices: tuple) -> None:
            if value not in choices:
                fail(f"unknown {name} {value!r}; choose one of {', '.join(map(str, choices))}")

        if not self.data:
            fail("data is empty; give an image folder, 'cifar10' or a path to cifar-10-python.tar.gz")
        if self.val_split is not None and (self.val_split in ("", "train", ".", "..")
                                           or "/" in self.val_split):
            fail(f"val_split must name a folder beside train/, such as 'val' or 'test', not {self.val_split!r}"
                 + ("; to evaluate on the training images, give their folder as the data: --data DIR/train"
                    if self.val_split == "train" else ""))
        choose("cache", self.cache, CACHE_MODES)
        choose("augment preset", self.augment, AUGMENT_PRESETS)
        choose("auto_augment policy", self.auto_augment, AUTO_AUGMENT_POLICIES)
        choose("bad_images policy", self.bad_images, BAD_IMAGE_POLICIES)
        if self.batch_size < 1:
            fail(f"batch_size must be at least 1, not {self.batch_size}")
        if self.workers is not None and self.workers < 0:
            fail(f"workers must be 0 or more (0 loads in the main process), not {self.workers}")
        if self.max_per_class is not None and self.max_per_class < 1:
            fail(f"max_per_class must be at least 1 (or None for all images), not {self.max_per_class}")
        if self.input_size is not None and self.input_size < 1:
            fail(f"input_size must be a positive number of pixels, not {self.input_size}")
        for name in ("color_jitter", "mixup_alpha", "cutmix_alpha"):
            if getattr(self, name) < 0:
                fail(f"{name} must be 0 (off) or positive, not {getattr(self, name)}")


FREEZE_FORMAT = "stages:K (K = 0 freezes the stem only, 1..N the stem and the first K stages)"
OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("cosine", "step", "plateau", "constant")
SCHEDULE_UNITS = ("epoch", "step")
TRAINING_PRECISIONS = ("auto", "fp32", "bf16", "fp16")


@dataclass(frozen=True)
class ModelConfig:
    """The network to train and where its starting weights come from."""

    name: str = "cifar_resnet20"  # a registry name (`resnetlab models`)
    # Any ResNetConfig field, e.g. {"zero_init_residual": True, "drop_path_rate": 0.1}.
    # Zero-init of each block's last BN helps long ImageNet runs (Goyal et al. 2017) but costs
    # ten points of top-1 after 4 epochs on 5,000 CIFAR images (BENCHMARKS.md), so it is opt-in.
    options: dict = field(default_factory=dict)
    weights: str | None = None  # fine-tune from anything load_weights takes; None: train from scratch
    freeze: str | None = None  # FREEZE_FORMAT: no gradients, BN statistics kept
    freeze_bn: bool = False  # every BN keeps its statistics and affine parameters (small batches)
    sync_bn: bool = False  # BN statistics over all processes under torchrun
    channels_last: bool = False  # NHWC memory layout: faster convolutions on GPUs with tensor cores
    compile: bool = False  # torch.compile the model (first steps are slow while it compiles)
    grad_checkpointing: bool = False  # recompute block activations in the backward pass: less memory

    def __post_init__(self) -> None:
        if self.freeze is not None:
            self.frozen_stages  # validates the format

    @property
    def frozen_stages(self) -> int | None:
        if self.freeze is None:
            return None
        kind, _, count = self.freeze.partition(":")
        if kind != "stages" or not count.isdigit():
            raise ConfigError(f"freeze must look like {FREEZE_FORMAT}, not {self.freeze!r}")
        return int(count)


@dataclass(frozen=True)
class OptimConfig:
    """Optimizer and loss: the recipe of He et al. by default (SGD 0.1, momentum 0.9, wd 1e-4)."""

    name: str = "sgd"  # sgd | adamw
    lr: float = 0.1  # peak learning rate for the global batch (all processes, after accumulation)
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 1e-4  # not applied to BN parameters and biases
    backbone_lr_scale: float = 1.0  # the backbone learns at lr x this, the head at lr (0.1 for fine-tuning)
    label_smoothing: float = 0.0  # 0.1 is the modern ImageNet recipe
    grad_clip: float = 0.0  # max global gradient norm; 0: off
    accumulate: int = 1  # batches per optimizer step (global batch = batch_size x processes x this)
    ema_decay: float = 0.0  # per-step decay of an exponential moving average of weights; 0: off

    def __post_init__(self) -> None:
        if self.name not in OPTIMIZERS:
            raise ConfigError(f"unknown optimizer {self.name!r}; choose one of {', '.join(OPTIMIZERS)}")
        if self.lr <= 0 or self.weight_decay < 0 or not 0 <= self.momentum < 1:
            raise ConfigError("lr must be positive, weight_decay >= 0 and momentum in [0, 1)")
        if not 0 <= self.label_smoothing < 1 or self.grad_clip < 0 or not 0 <= self.ema_decay < 1:
            raise ConfigError("label_smoothing and ema_decay must be in [0, 1) and grad_clip >= 0")
        if self.accumulate < 1 or self.backbone_lr_scale < 0:
            raise ConfigError("accumulate must be >= 1 and backbone_lr_scale >= 0")


@dataclass(frozen=True)
class ScheduleConfig:
    """Linear warmup, then one decay of the learning rate."""

    name: str = "cosine"  # cosine | step | plateau | constant
    unit: str = "epoch"  # what warmup and milestones count: epochs, or optimizer steps (iterations)
    warmup: float = 0.0  # length of the linear warmup, in `unit`s
    milestones: tuple[float, ...] = ()  # step decay: multiply the lr by gamma at each, in `unit`s
    gamma: float = 0.1  # step and plateau decay factor
    min_lr_ratio: float = 0.0  # cosine floor, as a fraction of the peak lr
    patience: int = 5  # plateau: epochs without a better val top-1 before decaying

    def __post_init__(self) -> None:
        object.__setattr__(self, "milestones", tuple(self.milestones))
        if self.name not in SCHEDULES:
            raise ConfigError(f"unknown schedule {self.name!r}; choose one of {', '.join(SCHEDULES)}")
        if self.unit not in SCHEDULE_UNITS:
            raise ConfigError(f"schedule unit must be 'epoch' or 'step', not {self.unit!r}")
        if self.warmup < 0 or list(self.milestones) != sorted(self.milestones) or not 0 < self.gamma <= 1:
            raise ConfigError("warmup must be >= 0, milestones increasing and gamma in (0, 1]")


@dataclass(frozen=True)
class DistillConfig:
    """Knowledge distillation (Hinton et al. 2015): a trained teacher's softened outputs as extra targets."""

    teacher: str | None = None  # a .safetensors written by training, with the student's classes; None: off
    alpha: float = 0.5  # weight of the soft-target loss; 1 - alpha goes to the hard labels
    temperature: float = 4.0  # softens both distributions; the soft loss is scaled by its square

    def __post_init__(self) -> None:
        if not 0 <= self.alpha <= 1 or self.temperature <= 0:
            raise ConfigError(f"distill.alpha must be in [0, 1] and distill.temperature positive, "
                              f"not {self.alpha} and {self.temperature}")


@dataclass(frozen=True)
class TrainConfig:
    """One run, top to bottom. Saved as the run's config.yaml; `--recipe` reads it back."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    epochs: int = 30
    max_steps: int | None = None  # stop after this many optimizer steps (the paper counts iterations)
    seed: int = 0
    precision: str = "auto"  # auto: bf16 on a GPU that has it, else fp32; fp16 uses a gradient scaler
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    deterministic: bool = False  # deterministic kernels: bit-identical reruns and resumes on CPU
    out: str = "runs/train"  # the run directory: checkpoints, logs, curves
    resume: bool = False  # continue the run in `out` from its last checkpoint

    def __post_init__(self) -> None:
        if self.epochs < 1 or (self.max_steps is not None and self.max_steps < 1):
            raise ConfigError("epochs and max_steps must be at least 1")
        if self.precision not in TRAINING_PRECISIONS:
            raise ConfigError(f"unknown precision {self.precision!r}; choose one of {', '.join(TRAINING_PRECISIONS)}")


def config_to_dict(config) -> dict:
    """Plain nested dicts and lists: what config.yaml and the manifest hold."""
    def plain(value):
        if isinstance(value, tuple):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value
    return {f.name: (config_to_dict(getattr(config, f.name)) if dataclasses.is_dataclass(getattr(config, f.name))
                     else plain(getattr(config, f.name)))
            for f in dataclasses.fields(config)}


def config_from_dict(values: dict, cls: type = None, where: str = ""):
    """Build a (nested) config from plain dicts, refusing unknown keys (with a suggestion) and wrong types."""
    cls = cls or TrainConfig
    if not isinstance(values, dict):
        raise ConfigError(f"{where or 'the recipe'} must be a mapping of keys to values, not {values!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        dotted = f"{where}.{key}" if where else key
        if key not in fields:
            close = difflib.get_close_matches(key, fields, n=1)
            hint = f"; did you mean {where + '.' if where else ''}{close[0]}?" if close else ""
            raise ConfigError(f"unknown key {dotted!r}{hint}")
        nested = _NESTED.get((cls, key))
        kwargs[key] = config_from_dict(value, nested, dotted) if nested else value
    check_types(cls, values, where)
    return cls(**kwargs)


def apply_overrides(values: dict, overrides: list[str]) -> dict:
    """``["optim.lr=0.05", "data.batch_size=64"]`` applied to a nested dict; values parse as YAML."""
    values = copy.deepcopy(values)
    for override in overrides:
        key, sep, text = override.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {override!r} must look like section.key=value, e.g. optim.lr=0.05")
        *parents, leaf = key.split(".")
        node = values
        for parent in parents:
            node = node.setdefault(parent, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {override!r}: {parent} is not a section")
        node[leaf] = _parse_yaml(text)
    return values


class _ConfigYamlLoader(yaml.SafeLoader):
    """YAML 1.1, which PyYAML speaks, reads 1e-4 (an exponent without a dot) as a string; in a
    config it is a number."""


_ConfigYamlLoader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$"),
                                        list("-+.0123456789"))


def _parse_yaml(text: str):
    return yaml.load(text, Loader=_ConfigYamlLoader)


def load_recipe(recipe: str | os.PathLike) -> dict:
    """The sections of a recipe: a YAML file, or a shipped recipe's name (``cifar10_resnet20``, .yaml optional)."""
    source = _recipe_source(recipe)
    try:
        values = _parse_yaml(source.read_text()) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"recipe {recipe} is not valid YAML: {str(error).splitlines()[0]}") from error
    if not isinstance(values, dict):
        raise ConfigError(f"recipe {recipe} must be a mapping of sections (model, data, optim, ...)")
    return values


def shipped_recipes() -> list[str]:
    """The names ``--recipe`` takes besides a path: the YAML files in the package's recipes/ folder."""
    return sorted(entry.name.removesuffix(".yaml") for entry in _SHIPPED_RECIPES.iterdir()
                  if entry.name.endswith(".yaml"))


def _recipe_source(recipe: str | os.PathLike):
    path = Path(recipe)
    if path.is_file():
        return path
    shipped = _SHIPPED_RECIPES / f"{path.name.removesuffix('.yaml')}.yaml"
    if path.parent == Path(".") and shipped.is_file():
        return shipped
    if shipped.is_file():  # recipes/cifar10_resnet20.yaml, as a checkout once had them
        raise ConfigError(f"recipe {recipe} does not exist; the shipped one is named without a folder: "
                          f"--recipe {path.stem}")
    raise ConfigError(f"recipe {recipe} does not exist; give a YAML file or a shipped recipe: "
                      f"{', '.join(shipped_recipes())}")


_SHIPPED_RECIPES = resources.files(__package__) / "recipes"
_NESTED = {(TrainConfig, "model"): ModelConfig, (TrainConfig, "data"): DataConfig,
           (TrainConfig, "optim"): OptimConfig, (TrainConfig, "schedule"): ScheduleConfig,
           (TrainConfig, "distill"): DistillConfig}
