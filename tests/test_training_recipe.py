"""Each recipe option, end to end through ``train``: what it must do to the weights of a real run.

Every run starts from the same saved weights and takes one or two optimizer steps on the same real
CIFAR-10 batches, so an option's effect is measured against a plain run, not just run.
"""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from resnetlab import create_model, save_weights
from resnetlab.config import DataConfig, ModelConfig, OptimConfig, ScheduleConfig, TrainConfig
from resnetlab.engine.state import load_training_state
from resnetlab.errors import ConfigError
from resnetlab.engine.trainer import train
from subsets import cifar_subset

CLASSES = 4
LR = 0.02


@pytest.fixture(scope="module")
def cifar_tiny(cifar10_root, tmp_path_factory) -> Path:
    """64 real training images (16 in each of 4 classes) and 16 test images."""
    return cifar_subset(cifar10_root, tmp_path_factory.mktemp("cifar64"), train_per_class=16, test_per_class=4,
                        classes=range(CLASSES))


@pytest.fixture(scope="module")
def start_weights(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("start") / "start.safetensors"
    save_weights(create_model("cifar_resnet20", num_classes=CLASSES), path)
    return path


@pytest.fixture
def base_config(cifar_tiny, start_weights, tmp_path) -> TrainConfig:
    """Two steps of 32 un-augmented images a run at a constant lr, from ``start_weights``."""
    return TrainConfig(
        model=ModelConfig(name="cifar_resnet20", weights=str(start_weights)),
        data=DataConfig(data=str(cifar_tiny), batch_size=32, augment="none", workers=0),
        optim=OptimConfig(lr=LR), schedule=ScheduleConfig(name="constant"),
        epochs=1, seed=0, deterministic=True, out=str(tmp_path / "run"),
    )


def run(config: TrainConfig, name: str, **changes) -> Path:
    config = replace(config, out=str(Path(config.out).parent / name), **changes)
    return train(config).run_dir


def trained_parameters(run_dir: Path) -> dict[str, torch.Tensor]:
    """The weights being trained (not EMA), learnable parameters only."""
    names = {name for name, _ in create_model("cifar_resnet20", num_classes=CLASSES).named_parameters()}
    state = load_training_state(run_dir / "last.pt")["model"]
    return {name: tensor for name, tensor in state.items() if name in names}


def update(run_dir: Path, start: Path) -> torch.Tensor:
    """Everything the run changed in the learnable parameters, flattened."""
    before = load_file(start)
    after = trained_parameters(run_dir)
    return torch.cat([(after[name] - before[name]).flatten() for name in sorted(after)])


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return torch.nn.functional.cosine_similarity(a, b, dim=0).item()


def test_gradient_accumulation_takes_the_step_of_the_large_batch(base_config, start_weights):
    # Frozen BN makes each image's gradient independent of its batch-mates: 2 x 16 must equal 32.
    model = replace(base_config.model, freeze_bn=True)
    large = update(run(base_config, "large", model=model), start_weights)
    accumulated = update(run(base_config, "accumulated", model=model,
                             data=replace(base_config.data, batch_size=16),
                             optim=replace(base_config.optim, accumulate=2)), start_weights)
    small_steps = update(run(base_config, "small", model=model, data=replace(base_config.data, batch_size=16)),
                         start_weights)
    assert large.abs().max() > 1e-3
    torch.testing.assert_close(accumulated, large, atol=1e-6, rtol=1e-4)
    assert (small_steps - large).abs().max() > 100 * (accumulated - large).abs().max()  # 4 steps, not 2


def test_gradient_clipping_bounds_the_step_to_lr_times_the_clip(base_config, start_weights):
    plain_sgd = replace(base_config.optim, momentum=0.0, weight_decay=0.0)
    clip = 0.01
    clipped = update(run(base_config, "clipped", optim=replace(plain_sgd, grad_clip=clip), max_steps=1),
                     start_weights)
    unclipped = update(run(base_config, "unclipped", optim=plain_sgd, max_steps=1), start_weights)
    assert clipped.norm().item() == pytest.approx(LR * clip, rel=1e-3)
    assert unclipped.norm().item() > 10 * LR * clip
    assert cosine(clipped, unclipped) > 0.999  # clipping scales the gradient, it keeps its direction


def test_ema_weights_are_saved_and_follow_the_decay(base_config):
    decay = 0.75
    first = run(base_config, "one_step", max_steps=1)
    ema_run = run(base_config, "ema", optim=replace(base_config.optim, ema_decay=decay), max_steps=2)
    after_first = load_training_state(first / "last.pt")["model"]
    after_second = load_training_state(ema_run / "last.pt")["model"]
    saved = load_file(ema_run / "last.safetensors")
    checked = 0
    for name, tensor in saved.items():
        if not tensor.is_floating_point():
            continue
        # The first update copies the weights; each later one moves the average by (1 - decay).
        expected = decay * after_first[name] + (1 - decay) * after_second[name]
        torch.testing.assert_close(tensor, expected, atol=1e-6, rtol=1e-5)
        checked += 1
    assert checked > 60  # every conv, BN and fc tensor, parameters and running statistics
    assert not torch.equal(saved["fc.weight"], after_second["fc.weight"])


def test_bf16_autocast_on_cpu_takes_nearly_the_fp32_step_and_keeps_fp32_weights(base_config, start_weights):
    fp32 = update(run(base_config, "fp32", precision="fp32", max_steps=1), start_weights)
    bf16_run = run(base_config, "bf16", precision="bf16", max_steps=1)
    bf16 = update(bf16_run, start_weights)
    assert not torch.equal(bf16, fp32)  # the forward really ran in bfloat16
    assert cosine(bf16, fp32) > 0.99
    assert all(t.dtype == torch.float32 for t in load_file(bf16_run / "last.safetensors").values()
               if t.is_floating_point())
    record = json.loads((bf16_run / "metrics.jsonl").read_text().splitlines()[0])
    assert torch.isfinite(torch.tensor(record["train_loss"]))


def test_channels_last_trains_to_the_same_weights(base_config, start_weights):
    contiguous = update(run(base_config, "contiguous"), start_weights)
    channels_last = update(run(base_config, "channels_last", model=replace(base_config.model, channels_last=True)),
                           start_weights)
    # NHWC kernels sum in another order. The gradients of a freshly initialised net with batch norm
    # are ill-conditioned: fp32 itself is 0.1-0.2% off the fp64 gradient in either layout, while in
    # fp64 the two layouts agree exactly. A layout mix-up would scramble the step, not shift it by 1%.
    assert cosine(channels_last, contiguous) > 0.999
    assert (channels_last - contiguous).norm() < 0.02 * contiguous.norm()


def test_torch_compile_trains_to_the_same_weights(base_config, start_weights):
    eager = update(run(base_config, "eager", deterministic=False), start_weights)
    compiled = update(run(base_config, "compiled", deterministic=False,
                          model=replace(base_config.model, compile=True)), start_weights)
    assert cosine(compiled, eager) > 0.999  # as close as channels_last: fused kernels round differently
    assert (compiled - eager).norm() < 0.02 * eager.norm()


def test_mixup_and_cutmix_train_on_soft_targets(base_config, start_weights):
    data = replace(base_config.data, augment="cifar", mixup_alpha=0.2, cutmix_alpha=1.0)
    optim = replace(base_config.optim, label_smoothing=0.1)
    mixed_run = run(base_config, "mixed", data=data, optim=optim)
    plain = update(run(base_config, "plain", data=replace(base_config.data, augment="cifar"), optim=optim),
                   start_weights)
    mixed = update(mixed_run, start_weights)
    record = json.loads((mixed_run / "metrics.jsonl").read_text().splitlines()[0])
    assert record["train_top1"] is None  # no hard labels to count against once images are mixed
    assert torch.isfinite(torch.tensor(record["train_loss"])) and 0 <= record["val_top1"] <= 1
    assert mixed.abs().max() > 1e-3 and not torch.allclose(mixed, plain)


def test_fp16_on_cpu_is_refused_before_training(base_config):
    with pytest.raises(ConfigError, match="fp16 mixed precision needs a CUDA GPU"):
        train(replace(base_config, precision="fp16", device="cpu"))
    assert not Path(base_config.out).exists()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="fp16 autocast with a gradient scaler needs a CUDA GPU")
def test_fp16_with_a_gradient_scaler_on_cuda_takes_nearly_the_fp32_step(base_config, start_weights):
    cuda = replace(base_config, device="cuda", deterministic=False, max_steps=1)
    fp32 = update(run(cuda, "fp32", precision="fp32"), start_weights)
    fp16_run = run(cuda, "fp16", precision="fp16")
    assert cosine(update(fp16_run, start_weights), fp32) > 0.99
    assert load_training_state(fp16_run / "last.pt")["scaler"]["scale"] > 0  # resumes with its loss scale


def test_adamw_first_step_moves_every_weight_by_the_lr(base_config, start_weights):
    # Adam's first step is m / sqrt(v) = g / |g|: each weight with a gradient moves by lr, whatever its scale.
    adamw = replace(base_config.optim, name="adamw", lr=1e-3, weight_decay=0.0)
    step = update(run(base_config, "adamw", optim=adamw, max_steps=1), start_weights).abs()
    moved = step[step > 0]
    assert len(moved) > 0.99 * len(step)
    assert moved.median().item() == pytest.approx(1e-3, rel=1e-3)
