"""A whole benchmark: every model x input size x backend x precision x batch size, one row each.

Each row builds its callable afresh (``resnetlab.optimize``), so its memory is its own: the
weights the backend holds, the pools and caches it keeps, and the peak of one call, never
memory an earlier row left behind. ``compare`` adds the same-named torchvision or timm model,
run as it is (eager, fp32): the numbers our build should be read against.
"""
from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from ..complexity import count_macs, count_parameters
from ..config import DataConfig
from ..data.loaders import build_eval_loader
from ..errors import ConfigError
from ..image_input import check_reads_image_files
from ..deploy.files import load_deployed, model_file_format
from ..deploy.model import DeployedModel
from ..deploy.export import read_export_metadata
from ..models import HRNetConfig, ResNetConfig, create_model, load_model
from ..models.registry import build_model, model_config
from ..models.weights import config_from_metadata
from ..deploy.optimize import optimize
from ..hardware import cpu_peak, torch_threads
from .measure import measure
from .memory import held_bytes
from .report import BenchRow, fraction_of_peak

log = logging.getLogger(__name__)
CHECK_MODEL = "cifar_resnet20"  # the smallest registry model: checking each backend with it is cheap


@dataclass(frozen=True)
class _Library:
    has: Callable[[str], bool]
    build: Callable[[str], torch.nn.Module]


def _torchvision() -> _Library:
    import torchvision

    return _Library(has=lambda name: name in torchvision.models.list_models(module=torchvision.models),
                    build=lambda name: torchvision.models.get_model(name, weights=None))


def _timm() -> _Library:
    try:
        import timm
    except ImportError:
        raise ConfigError("--compare timm needs timm installed: pip install timm") from None
    return _Library(has=timm.is_model, build=lambda name: timm.create_model(name, pretrained=False))


LIBRARIES = {"torchvision": _torchvision, "timm": _timm}


@dataclass(frozen=True)
class _Setting:
    """How to build one row's callable (it names its ``backend``), and the row's other labels."""

    build: Callable[[], DeployedModel]
    precision: str
    params: int
    holds_our_weights: bool  # the comparison rows' library models are untrained: no top-1 for them


@dataclass(frozen=True)
class BenchSettings:
    """What ``resnetlab bench`` measures: every model x input size x backend x precision x batch size, one row each.

    ``input_sizes`` None: each model's own (224 for ImageNet models, 32 for CIFAR ones).
    ``checkpoint`` (a file ``save_weights`` wrote, or an ``.onnx``, ``.pt2`` or ``.pt`` from ``resnetlab export`` or
    ``quantize``, measured as it is on its own runtime) is measured instead of registry ``models``; with
    ``data`` (a folder with a val/ or test/ split, or cifar10) each backend and precision also gets
    its top-1 there, at the checkpoint's own preprocessing. ``threads`` sets torch's CPU threads for
    the run (None keeps the current setting). ``compare`` adds the same-named models of these libraries
    (torchvision, timm), eager fp32.
    """

    models: Sequence[str] = ("resnet50",)
    batch_sizes: Sequence[int] = (1,)
    input_sizes: Sequence[int] | None = None
    precisions: Sequence[str] = ("fp32",)
    backends: Sequence[str] = ("eager",)
    device: str = "cpu"
    threads: int | None = None
    compare: Sequence[str] = ()
    warmup: int = 3  # untimed calls before timing
    repeats: int = 10  # timed calls per row
    checkpoint: str | None = None
    data: str | None = None

    def __post_init__(self) -> None:
        if self.data is not None and self.checkpoint is None:
            raise ConfigError("--data measures the top-1 of trained weights: give them with --checkpoint "
                              "(e.g. RUN_DIR/best.safetensors from resnetlab train)")
        if self.checkpoint is not None and self.models:
            raise ConfigError("give either model names or --checkpoint, not both: the checkpoint names its model")
        for label, values in (("backend", self.backends), ("precision", self.precisions)):
            if not values:
                raise ConfigError(f"no {label} to measure; name at least one")
        for label, values in (("batch size", self.batch_sizes), ("input size", self.input_sizes or [1])):
            if not values or min(values) < 1:
                raise ConfigError(f"every {label} must be at least 1, not {', '.join(map(str, values)) or 'none'}")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"threads must be at least 1, not {self.threads}")
        if self.warmup < 0 or self.repeats < 1:
            raise ConfigError(f"need 0 or more warm-up calls and 1 or more repeats, not {self.warmup} and "
                              f"{self.repeats}")
        unknown = sorted(set(self.compare) - set(LIBRARIES))
        if unknown:
            raise ConfigError(f"cannot compare with {', '.join(unknown)}; choose from {', '.join(LIBRARIES)}")


def run_benchmark(settings: BenchSettings) -> list[BenchRow]:
    """Measure every combination; rows come in the order model, input size, backend, precision, batch. On a CPU,
    fp32 rows carry their fraction of the CPU's FP32 peak (``hardware.cpu_peak``)."""
    models, backends, precisions, checkpoint = settings.models, settings.backends, settings.precisions, \
        settings.checkpoint
    input_sizes, batch_sizes = settings.input_sizes, settings.batch_sizes
    measured = None  # the checkpoint's model: a ResNet, or a graph file measured as it is
    if checkpoint is not None:
        if model_file_format(Path(checkpoint)) != "safetensors":
            graph = load_deployed(checkpoint)
            if list(backends) != ["eager"] or list(precisions) != ["fp32"]:
                raise ConfigError(f"a {Path(checkpoint).suffix} file is measured as it is ({graph.backend}, "
                                  f"{graph.precision}): leave out --backend and --precision")
            if input_sizes and set(input_sizes) != {graph.preprocessing.input_size}:
                raise ConfigError(f"{checkpoint} was exported at {graph.preprocessing.input_size} px; "
                                  "leave out --input-size")
            measured = graph
        else:
            measured = load_model(checkpoint).eval()
        models = [measured.arch]
        if settings.data is not None:
            check_reads_image_files(measured.in_chans if isinstance(measured, DeployedModel)
                                    else measured.config.in_chans)
    if not models:
        raise ConfigError("no model to measure; name at least one")
    for name in models:
        model_config(name)  # an unknown name fails here, naming the close ones
    target = _device(settings.device)
    libraries = {label: LIBRARIES[label]() for label in settings.compare}
    comparisons = {name: [label for label in libraries if libraries[label].has(name)] for name in models}
    for name, found in comparisons.items():
        for label in sorted(set(libraries) - set(found)):
            log.info("%s has no model named %s: no %s row for it", label, name, label)

    as_is = isinstance(measured, DeployedModel)
    setups_per_size = 1 if as_is else len(backends) * len(precisions)
    rows = []
    total = sum(len(input_sizes or [None]) * len(batch_sizes) * (setups_per_size + len(comparisons[name]))
                for name in models)
    with torch_threads(settings.threads) as used:
        if not as_is:
            _check_backends(backends, precisions, target)
        peak = cpu_peak(used).gflops if target.type == "cpu" else None
        with tqdm(total=total, desc="bench", unit="row", disable=None, leave=False) as progress:
            for name in models:
                model = measured if as_is else \
                    (measured if measured is not None else create_model(name).eval()).to(target)
                loader = _eval_loader(model, settings.data) if settings.data is not None else None
                with torch.device("meta"):  # the checkpoint's own config: a pruned net has its own widths
                    shapes_only = build_model(_config_of(model, checkpoint))
                references = {label: libraries[label].build(name).eval().to(target) for label in comparisons[name]}
                for size in input_sizes or [model.preprocessing.input_size]:
                    macs = count_macs(shapes_only, size)
                    setups = [_as_it_is(model, count_parameters(shapes_only))] if as_is else \
                        [_optimized(model, backend, precision, size) for backend in backends for precision in precisions]
                    setups += [_reference(label, module) for label, module in references.items()]
                    for setting in setups:
                        first = len(rows)
                        for batch in batch_sizes:
                            images = torch.randn(batch, shapes_only.config.in_chans, size, size, device=target)
                            # top-1 does not depend on the batch size: measured once per setting
                            scored = loader if len(rows) == first and setting.holds_our_weights else None
                            rows.append(_row(name, setting, images, macs, peak, settings.warmup, settings.repeats, scored))
                            rows[-1].top1 = rows[first].top1
                            progress.update()
    return rows


def _eval_loader(model: torch.nn.Module, data: str):
    loader, _ = build_eval_loader(DataConfig(data=data, batch_size=64, workers=0), model.preprocessing,
                                  model.class_names)
    return loader


@torch.no_grad()
def _top1(run: Callable[[torch.Tensor], torch.Tensor], loader, device: torch.device) -> float:
    correct = seen = 0
    for images, labels in loader:
        predicted = torch.as_tensor(run(images.to(device))).argmax(1).cpu()
        correct += (predicted == labels).sum().item()
        seen += len(labels)
    return correct / max(seen, 1)


def _row(name: str, setting: _Setting, images: torch.Tensor, macs: int, peak_gflops: float | None,
         warmup: int, repeats: int, loader=None) -> BenchRow:
    held_before = held_bytes(images.device)
    run = setting.build()  # freed on return, before the next row's baseline
    result = measure(run, images, warmup, repeats, held_before=held_before)
    return BenchRow(top1=_top1(run, loader, images.device) if loader is not None else None,
        model=name, backend=run.backend, precision=setting.precision, batch_size=len(images),
        input_size=images.shape[-1], params=setting.params, macs=macs,
        latency_ms_median=result.latency_ms_median, latency_ms_p90=result.latency_ms_p90,
        throughput=result.throughput, memory_mb=result.memory_mb,
        fraction_of_peak=fraction_of_peak(result.throughput, macs, peak_gflops)
        if peak_gflops is not None and setting.precision == "fp32" else None)


def _check_backends(backends: Sequence[str], precisions: Sequence[str], device: torch.device) -> None:
    # optimize knows which backends and precisions exist and are installed: asking it with the
    # smallest model stops a bad combination before anything is timed.
    model = create_model(CHECK_MODEL).eval().to(device)
    for backend in backends:
        for precision in precisions:
            optimize(model, backend=backend, precision=precision, input_size=(32, 32))


def _optimized(model: torch.nn.Module, backend: str, precision: str, size: int) -> _Setting:
    return _Setting(build=lambda: optimize(model, backend=backend, precision=precision, input_size=(size, size)),
                    precision=precision, params=count_parameters(model), holds_our_weights=True)


def _as_it_is(model: DeployedModel, params: int) -> _Setting:
    return _Setting(build=lambda: load_deployed(model.path), precision=model.precision, params=params,
                    holds_our_weights=True)


def _config_of(model, checkpoint: str | None) -> ResNetConfig | HRNetConfig:
    if isinstance(model, DeployedModel):
        return config_from_metadata(read_export_metadata(checkpoint), checkpoint)
    return model.config


def _reference(label: str, module: torch.nn.Module) -> _Setting:
    # A copy per row, so that the row's memory holds the weights, as optimize's copies do.
    device = next(module.parameters()).device
    return _Setting(build=lambda: DeployedModel(run=copy.deepcopy(module), backend=f"{label}-eager", precision="fp32",
                                                device=device), precision="fp32",
                    params=count_parameters(module), holds_our_weights=False)


def _device(name: str) -> torch.device:
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device {name!r}; use cpu or cuda") from None
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"resnetlab bench runs on cpu or cuda, not {name!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("CUDA was requested but no GPU is visible; use --device cpu")
    return device
