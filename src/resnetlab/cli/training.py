"""The training side of the ``resnetlab`` command: train, distill, demo.

``train`` turns a recipe file, flags and ``--set`` overrides into one ``TrainConfig``.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from ..config import (AUGMENT_PRESETS, AUTO_AUGMENT_POLICIES, BAD_IMAGE_POLICIES, OPTIMIZERS, SCHEDULES,
                      TRAINING_PRECISIONS, TrainConfig, apply_overrides, config_from_dict, config_to_dict, load_recipe)
from ..errors import ConfigError
from .evaluation import print_evaluation, print_predictions


# flag dest -> dotted key in TrainConfig. A flag left unset keeps the recipe's (or default) value.
FLAG_KEYS = {
    "model": "model.name", "weights": "model.weights", "zero_init_residual": "model.options.zero_init_residual",
    "freeze": "model.freeze", "freeze_bn": "model.freeze_bn",
    "sync_bn": "model.sync_bn", "channels_last": "model.channels_last", "compile": "model.compile",
    "grad_checkpointing": "model.grad_checkpointing",
    "data": "data.data", "batch_size": "data.batch_size", "workers": "data.workers",
    "max_per_class": "data.max_per_class", "augment": "data.augment", "auto_augment": "data.auto_augment",
    "color_jitter": "data.color_jitter", "mixup": "data.mixup_alpha", "cutmix": "data.cutmix_alpha",
    "bad_images": "data.bad_images", "input_size": "data.input_size",
    "optimizer": "optim.name", "lr": "optim.lr", "momentum": "optim.momentum", "nesterov": "optim.nesterov",
    "weight_decay": "optim.weight_decay", "backbone_lr_scale": "optim.backbone_lr_scale",
    "label_smoothing": "optim.label_smoothing", "grad_clip": "optim.grad_clip",
    "accumulate": "optim.accumulate", "ema_decay": "optim.ema_decay",
    "schedule": "schedule.name", "warmup": "schedule.warmup", "milestones": "schedule.milestones",
    "teacher": "distill.teacher", "alpha": "distill.alpha", "temperature": "distill.temperature",
    "epochs": "epochs", "max_steps": "max_steps", "seed": "seed", "precision": "precision",
    "device": "device", "deterministic": "deterministic", "out": "out",
}


def add_parsers(commands) -> None:
    _add_training_parser(commands.add_parser(
        "train", help="train or fine-tune on an image folder or CIFAR-10",
        description="Train a ResNet. A recipe (YAML) gives every setting; flags and --set override it."))
    _add_training_parser(commands.add_parser(
        "distill", help="train a student with a trained teacher's soft targets (knowledge distillation)",
        description="Train --student with --teacher's softened outputs as extra targets (Hinton et al.), "
                    "e.g. cifar_resnet110 -> cifar_resnet20. Every train flag applies."), distill=True)
    add_demo_parser(commands)


def _add_training_parser(train: argparse.ArgumentParser, distill: bool = False) -> None:
    train.add_argument("--recipe", type=Path,
                       help="a shipped recipe's name (e.g. cifar10_resnet20) or a YAML file (e.g. RUN_DIR/config.yaml)")
    train.add_argument("--resume", type=Path, metavar="RUN_DIR",
                       help="continue RUN_DIR from its last checkpoint, with its config.yaml")
    train.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override any config key, e.g. --set optim.lr=0.05 (repeatable)")
    section = train.add_argument_group("model")
    section.add_argument("--model", *(["--student"] if distill else []), dest="model",
                         help="architecture name (`resnetlab models`)")
    section.add_argument("--weights", help="start from these weights: a pretrained tag (resnet18.tv_in1k; `resnetlab weights list`), a path, URL or run's .safetensors")
    section.add_argument("--freeze", help="stages:K freezes the stem and the first K stages")
    _flag(section, "--zero-init-residual", "zero each block's last BN: blocks start as identities")
    _flag(section, "--freeze-bn", "keep every BN layer's statistics and parameters")
    _flag(section, "--sync-bn", "BN statistics over all processes under torchrun")
    _flag(section, "--channels-last", "NHWC memory layout (faster on tensor-core GPUs)")
    _flag(section, "--compile", "torch.compile the model")
    _flag(section, "--grad-checkpointing", "recompute activations in the backward pass: less memory, more time")
    section = train.add_argument_group("data")
    section.add_argument("--data", help="image folder (DIR/train/<class>/*, DIR/val or DIR/test), or cifar10")
    section.add_argument("--batch-size", type=int, help="images per batch on each process")
    section.add_argument("--workers", type=int, help="data loading processes")
    section.add_argument("--max-per-class", type=int, help="use the first N images of each class")
    section.add_argument("--augment", choices=AUGMENT_PRESETS,
                         help="imagenet: random-resized crop + flip; cifar: 4-pixel shift + flip; auto: cifar for "
                              "CIFAR-sized images, imagenet for larger ones")
    section.add_argument("--auto-augment", choices=AUTO_AUGMENT_POLICIES[1:],
                         help="a learned augmentation policy on top")
    section.add_argument("--color-jitter", type=float, help="brightness, contrast and saturation strength")
    section.add_argument("--mixup", type=float, metavar="ALPHA", help="mix image pairs, weights ~ Beta(ALPHA)")
    section.add_argument("--cutmix", type=float, metavar="ALPHA", help="paste patches between images, Beta(ALPHA)")
    section.add_argument("--bad-images", choices=BAD_IMAGE_POLICIES, help="skip or stop on unreadable files")
    section.add_argument("--input-size", type=int, help="crop side in pixels (default: the model's)")
    section = train.add_argument_group("optimisation")
    section.add_argument("--optimizer", choices=OPTIMIZERS, help="SGD with momentum, or AdamW")
    section.add_argument("--lr", type=float, help="peak learning rate for the global batch")
    section.add_argument("--momentum", type=float, help="SGD momentum")
    _flag(section, "--nesterov", "Nesterov momentum")
    section.add_argument("--weight-decay", type=float, help="on weights, never on BN parameters and biases")
    section.add_argument("--backbone-lr-scale", type=float, help="backbone lr = lr x this (fine-tuning: 0.1)")
    section.add_argument("--label-smoothing", type=float, help="share of the target spread over all classes")
    section.add_argument("--grad-clip", type=float, help="max gradient norm")
    section.add_argument("--accumulate", type=int, help="batches per optimizer step")
    section.add_argument("--ema-decay", type=float, help="EMA of weights, e.g. 0.999")
    section.add_argument("--schedule", choices=SCHEDULES,
                         help="lr decay after the warmup")
    section.add_argument("--warmup", type=float, help="linear warmup length (schedule unit, epochs by default)")
    section.add_argument("--milestones", type=_numbers, help="step decay points, e.g. 82,123")
    section = train.add_argument_group("distillation")
    section.add_argument("--teacher", help="a trained .safetensors (or a pretrained tag) with the same classes (turns distillation on)")
    section.add_argument("--alpha", type=float, help="weight of the teacher's soft targets")
    section.add_argument("--temperature", type=float, help="softening temperature")
    section = train.add_argument_group("run")
    section.add_argument("--epochs", type=int, help="passes over the training images")
    section.add_argument("--max-steps", type=int, help="stop after this many optimizer steps")
    section.add_argument("--seed", type=int, help="for weights, order and augmentation")
    section.add_argument("--precision", choices=TRAINING_PRECISIONS,
                         help="auto: bf16 on GPUs that have it, fp32 on CPUs; fp16 uses a gradient scaler")
    section.add_argument("--device", help="auto, cpu, cuda or cuda:N")
    _flag(section, "--deterministic", "deterministic kernels: bit-identical reruns and resumes on CPU")
    section.add_argument("--out", help="run directory")
    _show_defaults(train)
    train.set_defaults(run=cmd_distill if distill else cmd_train)


def _show_defaults(parser: argparse.ArgumentParser) -> None:
    """End each config flag's help with the value a run gets when neither the recipe nor the flag sets it."""
    defaults = _flatten(config_to_dict(TrainConfig()))
    for action in parser._actions:
        key = FLAG_KEYS.get(action.dest)
        if key is None:
            continue
        default = defaults.get(key)
        if default not in (None, False, [], ()):  # 0 == False: the zeros (mixup, grad_clip, ...) mean off
            action.help = f"{action.help or ''} (default {default})".lstrip()


def _flag(group, name: str, help_text: str) -> None:
    # Unset stays None so that a recipe's value is kept; given means True.
    group.add_argument(name, action="store_const", const=True, default=None, help=help_text)


def _numbers(text: str) -> list[float]:
    try:
        return [float(part) for part in text.split(",") if part]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas, e.g. 82,123, not {text!r}")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Recipe (or the resumed run's config.yaml), then flags, then --set overrides."""
    if args.resume is not None and args.recipe is not None:
        raise ConfigError("--resume reads the run's own config.yaml; leave out --recipe")
    recipe = args.resume / "config.yaml" if args.resume is not None else args.recipe
    if args.resume is not None and not recipe.is_file():
        raise ConfigError(f"nothing to resume: {recipe} does not exist; is {args.resume} a run directory?")
    values = config_to_dict(TrainConfig())
    if recipe is not None:
        values = _merge(values, load_recipe(recipe))
    flags = [f"{key}={_yaml_value(getattr(args, dest))}" for dest, key in FLAG_KEYS.items()
             if getattr(args, dest) is not None]
    if args.resume is not None:
        flags += [f"out={_yaml_value(str(args.resume))}", "resume=true"]
    config = config_from_dict(apply_overrides(values, flags + args.overrides))
    if args.resume is not None:
        _check_resume_changes(config_from_dict(values), config, args.resume)
    _check_flags_are_used(args, config)
    return config


# What a resume may change: how long the run goes, where and how fast it runs, where its data lies, and
# how its global batch is split (the trainer checks the global batch itself). The rest made its checkpoints.
RESUME_MAY_CHANGE = {"epochs", "max_steps", "device", "precision", "out", "resume", "data.data", "data.workers",
                     "data.batch_size", "optim.accumulate", "model.compile", "model.channels_last",
                     "model.grad_checkpointing"}


def _check_resume_changes(saved: TrainConfig, resumed: TrainConfig, run_dir: Path) -> None:
    before, after = _flatten(config_to_dict(saved)), _flatten(config_to_dict(resumed))
    changed = [f"{key} ({before.get(key)} -> {value})" for key, value in after.items()
               if key not in RESUME_MAY_CHANGE and before.get(key) != value]
    if changed:
        raise ConfigError(f"--resume continues {run_dir} with the settings that made its checkpoints; "
                          f"{', '.join(changed)} would change them: start a new run (--out) instead")


def _flatten(values: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in values.items():
        dotted = f"{prefix}{key}"
        flat.update(_flatten(value, f"{dotted}.") if isinstance(value, dict) else {dotted: value})
    return flat


def _check_flags_are_used(args: argparse.Namespace, config: TrainConfig) -> None:
    """A flag the run would not read is an error, not silently ignored."""
    if args.milestones is not None and config.schedule.name != "step":
        raise ConfigError(f"--milestones are the step schedule's decay points; this run's schedule is "
                          f"{config.schedule.name}: add --schedule step, or drop --milestones")
    if (args.momentum is not None or args.nesterov) and config.optim.name != "sgd":
        raise ConfigError(f"--momentum and --nesterov are SGD's; this run's optimizer is {config.optim.name}: "
                          "add --optimizer sgd, or leave them out")
    stray = [flag for flag, value in (("--alpha", args.alpha), ("--temperature", args.temperature))
             if value is not None]
    if stray and not config.distill.teacher:
        named = " and ".join(stray)
        raise ConfigError(f"{named} appl{'ies' if len(stray) == 1 else 'y'} to distillation from a teacher: give "
                          f"--teacher RUN_DIR/best.safetensors, or leave {named} out")


def _merge(base: dict, update: dict) -> dict:
    merged = dict(base)
    for key, value in update.items():
        merged[key] = _merge(base[key], value) if isinstance(value, dict) and isinstance(base.get(key), dict) \
            else value
    return merged


def _yaml_value(value) -> str:
    # Quote strings so that YAML parsing in apply_overrides keeps "1e-4"-like names as given.
    return repr(value) if isinstance(value, str) else str(value).lower() if isinstance(value, bool) else str(value)


def cmd_train(args: argparse.Namespace, console) -> None:
    from ..engine.trainer import train  # torch distributed and the data stack load only for training

    train(config_from_args(args))


def cmd_distill(args: argparse.Namespace, console) -> None:
    from ..engine.trainer import train

    config = config_from_args(args)
    if not config.distill.teacher:
        raise ConfigError("resnetlab distill needs a teacher: --teacher RUN_DIR/best.safetensors")
    train(config)


def add_demo_parser(commands) -> None:
    demo = commands.add_parser("demo", help="train, evaluate and predict on real CIFAR-10 images shipped "
                                            "with resnetlab (about a minute on a CPU)")
    demo.add_argument("--out", type=Path, default=Path("runs/demo"), help="where the data and runs go")
    demo.add_argument("--epochs", type=int, default=5)
    demo.set_defaults(run=cmd_demo)


def cmd_demo(args: argparse.Namespace, console) -> None:
    from ..config import DataConfig, ModelConfig, OptimConfig, ScheduleConfig
    from ..demo import extract_demo_data, new_run_dir
    from ..engine.evaluation import EvalSettings, evaluate_checkpoint
    from ..engine.trainer import BEST_WEIGHTS, train
    from ..deploy.files import load_deployed
    from ..predict import predict_files

    data = extract_demo_data(args.out)
    run_dir = new_run_dir(args.out)
    console.rule("1/3  train cifar_resnet20 on 5,000 real CIFAR-10 images")
    train(TrainConfig(model=ModelConfig(name="cifar_resnet20"), data=DataConfig(data=str(data), batch_size=32),
                      optim=OptimConfig(lr=0.05, weight_decay=5e-4), schedule=ScheduleConfig(warmup=0.5),
                      epochs=args.epochs, out=str(run_dir)))
    best = run_dir / BEST_WEIGHTS
    console.rule("2/3  evaluate on 1,000 held-out images")
    print_evaluation(evaluate_checkpoint(EvalSettings(best, str(data))), console)
    console.rule("3/3  predict")
    samples = [sorted((data / "test" / name).iterdir())[0] for name in ("cat", "ship", "truck")]
    print_predictions(predict_files(load_deployed(best), samples, top_k=3)[0])
    console.rule("your turn")
    console.print(
        f"Run folder: {run_dir} (config.yaml, manifest.json, metrics.jsonl, curves.png, best.safetensors)\n"
        "Train on your own images, laid out as DIR/train/<class>/*.jpg and DIR/val/<class>/*.jpg:\n"
        "  resnetlab train --recipe finetune_resnet18 --data DIR --out runs/mine\n"
        "  resnetlab eval --checkpoint runs/mine/best.safetensors --data DIR\n"
        "  resnetlab predict --checkpoint runs/mine/best.safetensors photo.jpg\n"
        "The paper's CIFAR-10 schedule: resnetlab train --recipe cifar10_resnet20\n"
        f"Deploy this one: resnetlab quantize --checkpoint {best} --calib {data / 'train'} --data {data}\n"
        f"  (or resnetlab export / prune / compress; resnetlab bench --checkpoint {best} to time it)", markup=False)
