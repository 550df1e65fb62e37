"""PT2E INT8 across the ResNet family: does each architecture capture, quantize and convert, and how far are
its INT8 logits from fp32? Both PT2E paths resnetlab uses: ``quantize --backend x86`` (``X86InductorQuantizer``,
post-training) and the ONNX QAT layout (``OnnxQDQQuantizer`` with 7-bit weights, before any fine-tune). Random
weights, one calibration batch of random images: the error is a smoke figure (the suite's agreement bars on
trained models are the real ones), a capture that fails is a real failure.

    .venv/bin/python benchmarks/bench_pt2e_family.py [preact_resnet18 seresnet18 ...] [--size 32]

Prints per model the largest |INT8 - fp32| logit over the largest |fp32| logit, for each path, and the time.
"""
from __future__ import annotations

import argparse
import time

import torch

from resnetlab import create_model
from resnetlab.compress.pt2e import calibrated, convert, onnx_qdq_quantizer, prepared_for_training, x86_quantizer
from resnetlab.deploy.optimize import fold_batch_norm

FAMILY = ["resnet18", "preact_resnet18", "seresnet18", "ecaresnet26t", "resnext50d_32x4d", "resnest14d",
          "res2net50_26w_4s", "hrnet_w18_small"]


def relative_error(model: torch.nn.Module, quantized: torch.nn.Module, images: torch.Tensor) -> float:
    with torch.no_grad():
        reference = model(images)
        return float((quantized(images) - reference).abs().max() / reference.abs().max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", default=FAMILY)
    parser.add_argument("--size", type=int, default=32, help="image side (default 32: capture cost, not accuracy)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for name in args.models:
        torch.manual_seed(0)
        model = create_model(name).eval()
        images = torch.randn(4, 3, args.size, args.size)
        start = time.perf_counter()
        x86 = calibrated(model, [images], x86_quantizer(is_qat=False))
        prepared = prepared_for_training(fold_batch_norm(model).train(), images, onnx_qdq_quantizer((-64, 63)))
        prepared.eval()
        with torch.no_grad():
            prepared(images)  # the observers see one batch, as a fine-tune's first step would
        onnx_layout = convert(prepared)
        print(f"{name:20s} x86 PTQ {relative_error(model, x86, images):.3f}  "
              f"ONNX QDQ {relative_error(model, onnx_layout, images):.3f}  "
              f"({time.perf_counter() - start:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
