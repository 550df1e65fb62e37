"""resnetlab bench: latency, throughput and memory measured; units honest; files, plots, one-line errors."""
from __future__ import annotations

import csv
import dataclasses
import io
import json
import time
from pathlib import Path

import pytest
import torch
from rich.console import Console

from resnetlab import count_macs, create_model
from resnetlab.hardware import cpu_peak, parse_cpu_peak, parse_int8_support, sgemm_gflops, torch_threads
from resnetlab.bench.measure import measure, side_by_side
from resnetlab.bench.memory import peak_memory_increase, polled_peak_increase
from resnetlab.bench.plots import write_plots
from resnetlab.bench.report import BenchRow, print_table, write_csv, write_json
from resnetlab.bench.run import BenchSettings, run_benchmark
from resnetlab.cli import main
from resnetlab.errors import ConfigError

CPU = torch.device("cpu")
FAST = dict(threads=1, warmup=1, repeats=2)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def run(capsys, *argv):
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def table_text(rows, note=None) -> str:
    console = Console(file=io.StringIO(), width=120)
    print_table(rows, console, note)
    return console.file.getvalue()


def classifier_macs(model) -> int:
    # The fc layer's MACs do not grow with the image; every convolution's grow with its pixels.
    return model.fc.in_features * model.fc.out_features


@pytest.fixture(scope="module")
def resnet18_rows() -> list[BenchRow]:
    """resnet18 at 64x64, batch 1 and 64, eager fp32 on one thread."""
    return run_benchmark(BenchSettings(["resnet18"], batch_sizes=[1, 64], input_sizes=[64], **FAST))


def test_resnet50_row_counts_gmacs_per_image_and_conv_macs_grow_with_pixels():
    (row,) = run_benchmark(BenchSettings(["resnet50"], batch_sizes=[1], input_sizes=[224], threads=1, warmup=0, repeats=1))
    assert (row.model, row.backend, row.precision, row.batch_size, row.input_size) == \
        ("resnet50", "eager", "fp32", 1, 224)
    assert row.params == 25_557_032 and round(row.macs / 1e9, 2) == 4.09
    with torch.device("meta"):
        model = create_model("resnet50")
    fc = classifier_macs(model)
    assert count_macs(model, 448) - fc == 4 * (row.macs - fc)  # 16.35 G: 4x the convolutions, same fc
    text = table_text([row])
    line = next(line for line in text.splitlines() if line.split()[:1] == ["resnet50"])
    assert " 4.09 " in line and " 25.56M " in line
    assert "GMACs" in text and "1 MAC = 2 FLOPs" in text and "memory" in text and "median" in text


def test_rows_count_macs_at_the_input_size_they_measure():
    rows = run_benchmark(BenchSettings(["cifar_resnet20"], batch_sizes=[1], input_sizes=[32, 64], threads=1, warmup=0, repeats=1))
    small, large = rows
    assert (small.input_size, large.input_size) == (32, 64)
    fc = classifier_macs(create_model("cifar_resnet20"))
    assert large.macs - fc == 4 * (small.macs - fc)


def test_memory_probe_sees_an_allocation_of_known_size():
    hundred_mb = 25_000_000  # float32 elements
    # Linux updates its resident-memory counters in batches of pages: allow 1% short.
    assert peak_memory_increase(lambda: torch.ones(hundred_mb), CPU) >= 99e6
    assert peak_memory_increase(lambda: None, CPU) < 10e6
    # The psutil sampler, used where the kernel keeps no resettable peak, sees it too.
    assert polled_peak_increase(lambda: torch.ones(hundred_mb).add_(1)) >= 99e6


def test_memory_grows_with_the_batch_and_holds_the_weights(resnet18_rows):
    one, sixty_four = resnet18_rows
    weights_mb = one.params * 4 / 1e6  # fp32; each row's callable holds its own (BN-folded) copy
    first_activation_mb = 64 * 64 * 32 * 32 * 4 / 1e6  # conv1's output at batch 64: 64 channels, 32x32
    assert one.memory_mb >= weights_mb
    assert sixty_four.memory_mb >= one.memory_mb + first_activation_mb


def test_latency_percentiles_and_throughput_agree(resnet18_rows):
    for row in resnet18_rows:
        assert row.latency_ms_p90 >= row.latency_ms_median > 0
        assert row.throughput == pytest.approx(row.batch_size * 1e3 / row.latency_ms_median, rel=1e-9)


def test_measure_times_each_call():
    def sleeper(images):
        time.sleep(0.005)

    result = measure(sleeper, torch.zeros(8, 3, 4, 4), warmup=0, repeats=5)
    assert 5 <= result.latency_ms_median <= result.latency_ms_p90 < 100
    assert result.latency_ms_iqr >= 0
    assert result.throughput == pytest.approx(8 / (result.latency_ms_median / 1e3))


def test_side_by_side_times_every_run_in_each_round():
    calls = []

    def sleeper(name: str, seconds: float):
        def run(images):
            calls.append(name)
            time.sleep(seconds)
        return run

    rounds = side_by_side([sleeper("fast", 0.002), sleeper("slow", 0.012)], torch.zeros(1, 3, 4, 4),
                          rounds=3, calls=2, warmup=1)
    assert calls == ["fast", "slow"] + ["fast", "fast", "slow", "slow"] * 3  # warm-up, then interleaved rounds
    fast, slow = rounds
    assert len(fast) == len(slow) == 3
    assert all(2 <= ms for ms in fast) and all(12 <= ms for ms in slow)
    assert sorted(fast)[1] < sorted(slow)[1]
    with pytest.raises(ConfigError, match="rounds and calls must be at least 1"):
        side_by_side([sleeper("fast", 0)], torch.zeros(1), rounds=0)


def test_fraction_of_peak_is_the_achieved_share_of_the_cpu_peak(resnet18_rows):
    peak = cpu_peak(1).gflops
    for row in resnet18_rows:  # where no peak can be derived (no /proc/cpuinfo), rows say so with None
        expected = None if peak is None else pytest.approx(row.throughput * 2 * row.macs / (peak * 1e9))
        assert row.fraction_of_peak == expected


def test_compare_adds_the_libraries_same_named_models():
    rows = run_benchmark(BenchSettings(["resnet18", "cifar_resnet20"], batch_sizes=[1], input_sizes=[32],
                         compare=["torchvision", "timm"], threads=1, warmup=0, repeats=1))
    assert [(row.model, row.backend) for row in rows] == [
        ("resnet18", "eager"), ("resnet18", "torchvision-eager"), ("resnet18", "timm-eager"),
        ("cifar_resnet20", "eager")]  # neither library has cifar_resnet20
    assert {row.params for row in rows[:3]} == {11_689_512}
    assert {row.precision for row in rows} == {"fp32"}


def _row(**changes) -> BenchRow:
    values = dict(model="resnet18", backend="eager", precision="fp32", batch_size=1, input_size=224,
                  params=11_689_512, macs=1_814_083_944, latency_ms_median=20.5, latency_ms_p90=22.25,
                  throughput=48.78, memory_mb=None, top1=None, fraction_of_peak=None)
    return BenchRow(**(values | changes))


def test_csv_and_json_read_back_as_the_same_rows(resnet18_rows, tmp_path):
    rows = resnet18_rows + [_row(top1=0.6976, memory_mb=None)]
    write_csv(rows, tmp_path / "bench.csv")
    write_json(rows, tmp_path / "bench.json", {"threads": 1})

    types = {field.name: field.type for field in dataclasses.fields(BenchRow)}
    with open(tmp_path / "bench.csv", newline="") as file:
        from_csv = [BenchRow(**{key: _parse(value, types[key]) for key, value in line.items()})
                    for line in csv.DictReader(file)]
    assert from_csv == rows
    document = json.loads((tmp_path / "bench.json").read_text())
    assert document["settings"] == {"threads": 1}
    assert [BenchRow(**row) for row in document["rows"]] == rows
    assert not list(tmp_path.glob(".*.tmp"))  # written atomically: no temporary file left behind


def _parse(text: str, annotation: str):
    if text == "":
        return None
    return text if annotation == "str" else int(text) if annotation == "int" else float(text)


def test_plots_are_png_files_drawn_when_their_data_is_there(tmp_path):
    scale = {160: (160 / 224) ** 2, 224: 1.0}
    rows = [_row(model=model, input_size=size, macs=int(macs * scale[size]), throughput=speed / scale[size],
                 latency_ms_median=1e3 / speed * scale[size], top1=top1)
            for model, macs, speed, top1 in [("resnet18", 1_814_083_944, 48.8, 0.698),
                                             ("resnet50", 4_089_184_256, 20.1, 0.761)]
            for size in (160, 224)]
    paths = write_plots(rows, tmp_path / "plots")
    assert {path.name for path in paths} == {"throughput_vs_macs.png", "latency_vs_input_size.png",
                                              "accuracy_vs_throughput.png"}
    for path in paths:
        content = path.read_bytes()
        assert content.startswith(PNG_SIGNATURE) and len(content) > 5_000

    one_size_no_accuracy = [dataclasses.replace(row, top1=None) for row in rows if row.input_size == 224]
    assert [p.name for p in write_plots(one_size_no_accuracy, tmp_path / "few")] == ["throughput_vs_macs.png"]


def test_bench_command_prints_the_table_and_writes_csv_json_and_plots(capsys, tmp_path):
    code, out, _ = run(capsys, "bench", "cifar_resnet20", "--input-size", "32", "--batch-size", "1,4",
                       "--threads", "1", "--warmup", "1", "--repeats", "2", "--csv", str(tmp_path / "b.csv"),
                       "--json", str(tmp_path / "b.json"), "--plot", str(tmp_path / "plots"))
    assert code == 0
    assert sum(line.split()[:1] == ["cifar_resnet20"] for line in out.splitlines()) == 2
    caption = " ".join(out.split())  # the table's caption wraps where the measured figures' widths put it
    assert "1 MAC = 2 FLOPs" in caption and "torch.mm 2048x2048 reaches" in caption
    with open(tmp_path / "b.csv", newline="") as file:
        assert [line["batch_size"] for line in csv.DictReader(file)] == ["1", "4"]
    settings = json.loads((tmp_path / "b.json").read_text())["settings"]
    assert settings["batch_sizes"] == [1, 4] and settings["threads"] == 1 and settings["backends"] == ["eager"]
    assert (tmp_path / "plots" / "throughput_vs_macs.png").read_bytes().startswith(PNG_SIGNATURE)


@pytest.mark.parametrize("argv, message", [
    (["resnet51"], "unknown model 'resnet51'; did you mean resnet50"),
    (["cifar_resnet20", "--batch-size", "0"], "every batch size must be at least 1, not 0"),
    (["cifar_resnet20", "--batch-size=1,-4"], "every batch size must be at least 1, not 1, -4"),
    (["cifar_resnet20", "--batch-size", "1,x"], "--batch-size takes whole numbers separated by commas"),
    (["cifar_resnet20", "--input-size", "224x"], "--input-size takes whole numbers separated by commas"),
    (["cifar_resnet20", "--backend", "tensorrt"], "unknown backend 'tensorrt'"),
    (["cifar_resnet20", "--precision", "int3"], "unknown precision 'int3'"),
    (["cifar_resnet20", "--compare", "keras"], "cannot compare with keras; choose from torchvision, timm"),
    (["cifar_resnet20", "--threads", "0"], "threads must be at least 1, not 0"),
    (["cifar_resnet20", "--backend", ","], "no backend to measure; name at least one"),
])
def test_bad_bench_input_is_one_line_on_stderr(capsys, argv, message):
    code, _, err = run(capsys, "bench", *argv)
    assert code == 2
    assert err.strip().count("\n") == 0 and message in err


def test_cuda_without_a_gpu_is_one_line_on_stderr(capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    code, _, err = run(capsys, "bench", "--device", "cuda")
    assert code == 2
    assert err.strip() == "resnetlab: error: CUDA was requested but no GPU is visible; use --device cpu"


def _cpuinfo(vendor: str, family: int, flags: str, mhz: str | None, cores: int, threads_per_core: int = 1,
             model: int = 1) -> str:
    blocks = []
    for processor in range(cores * threads_per_core):
        lines = [f"processor\t: {processor}", f"vendor_id\t: {vendor}", f"cpu family\t: {family}",
                 f"model\t\t: {model}", "physical id\t: 0", f"core id\t\t: {processor % cores}",
                 f"flags\t\t: fpu sse sse2 {flags}"]
        if mhz is not None:
            lines.append(f"cpu MHz\t\t: {mhz}")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"


def test_cpu_peak_of_an_avx2_intel():
    peak = parse_cpu_peak(_cpuinfo("GenuineIntel", 6, "avx avx2 fma", "2200.000", cores=4), cores_used=2)
    assert (peak.cores, peak.flop_per_cycle) == (2, 32)  # 8 lanes x 2 (FMA) x 2 pipes
    assert peak.gflops == pytest.approx(2 * 2.2 * 32)
    assert "AVX2+FMA" in peak.description and "boost can exceed it" in peak.description


def test_cpu_peak_of_an_avx512_intel_counts_physical_cores_only():
    text = _cpuinfo("GenuineIntel", 6, "avx avx2 fma avx512f avx512bw", "3000.000", cores=2, threads_per_core=2)
    peak = parse_cpu_peak(text, cores_used=4)  # 4 threads, but hyper-threads share a core's pipes
    assert (peak.cores, peak.flop_per_cycle) == (2, 64)  # 16 lanes x 2 x 2
    assert peak.gflops == pytest.approx(2 * 3.0 * 64)


def test_cpu_peak_of_amd_family_25_runs_avx512_on_256_bit_pipes():
    peak = parse_cpu_peak(_cpuinfo("AuthenticAMD", 25, "avx avx2 fma avx512f avx512bw", "2596.128", cores=2),
                          cores_used=1)
    assert (peak.cores, peak.flop_per_cycle) == (1, 32)  # 8 lanes, not 16
    assert peak.gflops == pytest.approx(2.596128 * 32)
    assert "AMD family 25" in peak.description


@pytest.mark.parametrize("vendor, family, model, flop_per_cycle, pipes", [
    ("AuthenticAMD", 23, 0x01, 16, "128-bit FMA pipes of Zen 1"),  # Zen 1 (Naples): 256-bit FMAs split in two
    ("AuthenticAMD", 23, 0x08, 16, "128-bit FMA pipes of Zen 1"),  # Zen+
    ("HygonGenuine", 24, 0x01, 16, "128-bit FMA pipes of Zen 1"),  # Hygon Dhyana, a Zen 1
    ("AuthenticAMD", 23, 0x31, 32, "256-bit FMA pipes, assumed"),  # Zen 2 (Rome)
    ("AuthenticAMD", 25, 0x01, 32, "256-bit FMA pipes of Zen 3"),  # Zen 3 (Milan)
])
def test_cpu_peak_knows_the_fma_pipe_width_of_each_amd_generation(vendor, family, model, flop_per_cycle, pipes):
    text = _cpuinfo(vendor, family, "avx avx2 fma", "2000.000", cores=2, model=model)
    peak = parse_cpu_peak(text, cores_used=2)
    assert peak.flop_per_cycle == flop_per_cycle and pipes in peak.description  # it says what it assumed
    assert peak.gflops == pytest.approx(2 * 2.0 * flop_per_cycle)


@pytest.mark.parametrize("flags, instruction", [
    ("avx2 fma avx512f avx512_vnni", "AVX-512 VNNI"), ("avx2 fma avx_vnni", "AVX-VNNI"),
    ("avx2 fma avx512f avx512_vnni amx_int8 amx_tile", "AMX"),
])
def test_int8_support_finds_the_dot_product_instructions(flags, instruction):
    support = parse_int8_support(_cpuinfo("GenuineIntel", 6, flags, "2000.000", cores=2))
    assert (support.instruction, support.saturates) == (instruction, False)


def test_int8_support_says_an_avx2_cpu_without_vnni_can_clip():
    support = parse_int8_support(_cpuinfo("AuthenticAMD", 23, "avx avx2 fma", "2000.000", cores=2))
    assert (support.instruction, support.saturates) == (None, True) and "16 bits" in support.description
    arm = parse_int8_support("processor\t: 0\nFeatures\t: fp asimd asimddp\nCPU implementer\t: 0x41\n")
    assert not arm.saturates  # Arm's dot products add into 32 bits
    assert parse_int8_support("").saturates  # unknown: laid out as for the CPUs that need the care


def test_cpu_peak_says_why_it_is_unknown():
    no_clock = parse_cpu_peak(_cpuinfo("GenuineIntel", 6, "avx2 fma", None, cores=2), cores_used=1)
    assert no_clock.gflops is None and "no 'cpu MHz' line" in no_clock.description
    elsewhere = cpu_peak(1, cpuinfo=Path("/nonexistent/cpuinfo"))
    assert elsewhere.gflops is None and "no /nonexistent/cpuinfo to read" in elsewhere.description


def test_sgemm_reaches_a_plausible_share_of_the_derived_peak():
    peak = cpu_peak(1)
    with torch_threads(1):
        achieved = sgemm_gflops(size=1024, repeats=3)
    assert achieved > 0
    if peak.gflops is not None:  # no /proc/cpuinfo (not Linux): nothing to compare with
        # Boost clocks run above the nominal clock the peak uses, but not by half again.
        assert achieved < 1.5 * peak.gflops


@pytest.fixture(scope="module")
def cifar_test_folder(cifar10_root, tmp_path_factory) -> Path:
    from subsets import cifar_subset
    return cifar_subset(cifar10_root, tmp_path_factory.mktemp("cifar_test"), train_per_class=1, test_per_class=50)


def test_a_checkpoint_on_real_data_gets_each_backends_top1(cifar_classifier, cifar_test_folder):
    rows = run_benchmark(BenchSettings([], batch_sizes=[1, 8], backends=["eager", "onnxruntime"], compare=["torchvision"],
                         checkpoint=str(cifar_classifier), data=str(cifar_test_folder), **FAST))
    ours = [row for row in rows if not row.backend.endswith("-eager")]
    assert [(row.model, row.backend, row.batch_size, row.input_size) for row in ours] == [
        ("cifar_resnet20", "eager", 1, 32), ("cifar_resnet20", "eager", 8, 32),
        ("cifar_resnet20", "onnxruntime", 1, 32), ("cifar_resnet20", "onnxruntime", 8, 32)]
    eager_top1 = ours[0].top1
    assert 0.25 < eager_top1 < 1  # the fixture's classifier is about 40% accurate on CIFAR-10 (chance 10%)
    assert all(abs(row.top1 - eager_top1) <= 0.01 for row in ours)  # same weights, same answers
    assert ours[1].top1 == eager_top1  # measured once per setting, shown for each batch size
    # torchvision has no cifar_resnet20: no comparison row, and never a top-1 for untrained weights
    assert all(row.top1 is None for row in rows if row.backend.endswith("-eager"))


@pytest.mark.parametrize("argv, message", [
    (["--data", "somewhere"], "--data measures the top-1 of trained weights: give them with --checkpoint"),
    (["resnet18", "--checkpoint", "x.safetensors"], "give either model names or --checkpoint, not both"),
])
def test_checkpoint_and_data_misuse_is_one_line_on_stderr(capsys, argv, message):
    code, _, err = run(capsys, "bench", *argv)
    assert code == 2 and message in err and err.strip().count("\n") == 0


def test_native_bf16_is_read_from_the_cpu_flags(tmp_path):
    from resnetlab.hardware import has_native_bf16

    with_bf16, without = tmp_path / "zen4", tmp_path / "haswell"
    with_bf16.write_text(_cpuinfo("AuthenticAMD", 25, "avx2 fma avx512f avx512_bf16", "2600.0", cores=2))
    without.write_text(_cpuinfo("GenuineIntel", 6, "avx2 fma", "2200.0", cores=2))
    assert has_native_bf16(with_bf16) and not has_native_bf16(without)
    assert not has_native_bf16(tmp_path / "missing")
