"""Shared fixtures: the real datasets in ../shared/data, extracted once per test session."""
from __future__ import annotations

import os
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from filelock import FileLock

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
# The tests read at most the first 1,000 training and 200 test images of each CIFAR-10 class;
# extracting only those (12,000 files instead of 60,000) saves most of each worker's start-up.
CIFAR_TRAIN_PER_CLASS = 1000
CIFAR_TEST_PER_CLASS = 200

if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs two workers on two cores: one thread each, for them and for the
    # training runs they start, instead of four threads fighting over two cores.
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)


# `make test` hands work to its two workers in this order, then in collection order: the longest
# modules first, so that the run ends on short tests and no long one is left to run alone. The first
# two are what the workers start with: one trains the shared classifier (test_quantize's first use),
# while the other trains conftest's source_run (test_training, then test_transfer) instead of waiting for it.
# Seconds measured on the Zen 3 host (one worker's share of each module).
LONGEST_FIRST = (
    "test_quantize.py",  # 320, and the classifier: 70
    "test_training.py",  # with test_transfer: 170, of which the source run: 100
    "test_transfer.py",
    "test_serve.py",  # 200
    "test_distill.py",  # 80
    "test_training_reliability.py",  # 270, three tests of 40-110
    "test_prune.py",  # 500 in 40 tests
    "test_demo.py",  # 75
    "test_optimize.py",  # 180 in 45 tests
    "test_features.py",  # 70 in 126 tests
    "test_reference_equivalence.py",  # 110 in 117 tests
    "test_registry.py",  # 50 in 100 tests
    "test_pretrained.py",  # 55 in 231 tests
    "test_detection.py",  # 50
    "test_cli.py",  # 60
    "test_compress.py",  # 50
    "test_bench.py",  # 50
    "test_serve_fuzz.py",  # 45
)


def pytest_configure(config):
    if config.getoption("dist", None) == "loadgroup":
        # xdist re-sorts the work by the number of tests in each group, which would start both
        # workers on the two largest groups, both waiting for the classifier: keep LONGEST_FIRST's order.
        config.option.loadscopereorder = False


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config, items):
    """Tag each ``xdist_group`` test's id with its group, as ``--dist loadgroup`` schedules by, and
    order the work LONGEST_FIRST.

    pytest-xdist 3.8 tags by assigning ``item._nodeid``, which pytest 9.2's nodes no longer read
    (they keep a structured ``_id``): its groups were silently ignored, and every module fixture
    of a grouped file ran on both workers (the transfer pretraining twice, 500 s each).
    """
    if not getattr(config.option, "loadgroup", False):  # set on xdist workers under --dist loadgroup
        return
    rank = {name: index for index, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: collection order otherwise
    for item in items:
        names = sorted({str(mark.args[0] if mark.args else mark.kwargs.get("name", "default"))
                        for mark in item.iter_markers("xdist_group")})
        suffix = "@" + "_".join(names)
        if not names or item.nodeid.endswith(suffix):  # ungrouped, or xdist's own tag took
            continue
        if hasattr(item, "_id"):
            item._id = type(item._id).parse(item.nodeid + suffix)
        else:
            item._nodeid = item.nodeid + suffix


def made_once(tmp_path_factory, name: str, make: Callable[[Path], object]) -> Path:
    """``make(folder)`` run once per test session, its folder shared by every xdist worker.

    Workers share the parent of their base temporary folder; the first to get here makes the
    folder while the others wait on the lock, then all read it. Without xdist: a folder of its own.
    """
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        folder = tmp_path_factory.mktemp(name)
        make(folder)
        return folder
    shared = tmp_path_factory.getbasetemp().parent
    folder, done = shared / name, shared / f"{name}.done"
    with FileLock(shared / f"{name}.lock"):
        if not done.exists():
            folder.mkdir(exist_ok=True)  # a worker that failed half-way leaves it behind
            make(folder)
            done.touch()
    return folder


@pytest.fixture(autouse=True)
def _keep_the_worker_on_its_threads():
    """A test that changes torch's thread count (a service starting in-process, say) would slow
    every later test on its worker by contending for the other worker's core: restore it."""
    threads = torch.get_num_threads()
    yield
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


def _shared_archive(name: str) -> Path:
    archive = SHARED_DATA / name
    if not archive.is_file():
        message = f"{archive} is missing; the real-data tests need ../shared/data beside the checkout"
        if os.environ.get("CI") == "true":
            pytest.fail(message)  # CI always has the data: a missing file is a failure, not a skip
        pytest.skip(message)
    return archive


def _extract(archive: Path, into: Path, keep=lambda member: True) -> Path:
    def data_filter(member: tarfile.TarInfo, path: str):
        return tarfile.data_filter(member, path) if keep(member) else None

    with tarfile.open(archive) as tar:
        tar.extractall(into, filter=data_filter)
    return into


def _first_cifar_images(member: tarfile.TarInfo) -> bool:
    """cifar10/<split>/<class>/NNNN.jpg with NNNN below the split's limit (files are numbered from 0)."""
    parts = Path(member.name).parts
    if not member.isfile() or len(parts) != 4:
        return True
    limit = CIFAR_TRAIN_PER_CLASS if parts[1] == "train" else CIFAR_TEST_PER_CLASS
    return int(Path(parts[3]).stem) < limit


@pytest.fixture(scope="session")
def cifar10_root(tmp_path_factory) -> Path:
    """``cifar10/{train,test}/<class>/NNNN.jpg``: the first real CIFAR-10 images of each class."""
    archive = _shared_archive("cifar10-jpeg.tar.gz")
    folder = made_once(tmp_path_factory, "cifar10", lambda into: _extract(archive, into, _first_cifar_images))
    return folder / "cifar10"


@pytest.fixture(scope="session")
def hymenoptera_root(tmp_path_factory) -> Path:
    """``hymenoptera_data/{train,val}/{ants,bees}/*.jpg``: real photos of many sizes."""
    archive = _shared_archive("hymenoptera.tar.gz")
    return made_once(tmp_path_factory, "hymenoptera", lambda into: _extract(archive, into)) / "hymenoptera_data"


@pytest.fixture(scope="session")
def source_half(cifar10_root, tmp_path_factory) -> Path:
    """5,000 real training images (1,000 a class) and 500 test images of the SOURCE_CLASSES."""
    from subsets import SOURCE_CLASSES, cifar_subset

    return cifar_subset(cifar10_root, tmp_path_factory.mktemp("source_half"), 1000, 100, SOURCE_CLASSES)


@pytest.fixture(scope="session")
def source_run(source_half, tmp_path_factory):
    """(config, result) of cifar_resnet20 trained by the engine for 3 epochs on ``source_half``:
    about 53% top-1 on its 500 test images, where chance is 20%.

    test_training checks this run and test_transfer fine-tunes it on the other half of the classes:
    one training for both, as the two modules share the xdist group "source_run"."""
    from resnetlab.config import DataConfig, ModelConfig, OptimConfig, ScheduleConfig, TrainConfig
    from resnetlab.engine.trainer import train

    config = TrainConfig(
        model=ModelConfig(name="cifar_resnet20"), data=DataConfig(data=str(source_half), batch_size=32),
        optim=OptimConfig(lr=0.05, weight_decay=5e-4), schedule=ScheduleConfig(name="cosine", warmup=0.5),
        epochs=3, seed=0, out=str(tmp_path_factory.mktemp("runs") / "source_half"))
    return config, train(config)


# A quickly trained CIFAR-10 classifier for the tests that need a model that has learned something
# (retrieval, Grad-CAM). Test scaffolding until the training engine exists: a plain SGD loop.
CLASSIFIER_TRAIN_PER_CLASS = 400  # 4,000 real training images, decoded once
CLASSIFIER_EPOCHS = 3
CLASSIFIER_BATCH = 128
CLASSIFIER_LR = 0.1  # per batch of 128, decayed linearly to 0


@pytest.fixture(scope="session")
def cifar_classifier(cifar10_root, tmp_path_factory) -> Path:
    """A cifar_resnet20 trained for about half a minute on real CIFAR-10, saved by save_weights.

    About 40% test accuracy: far from a good model, far from chance (10%). Trained once per
    session: under xdist the other worker waits for it instead of training its own copy.
    """
    folder = made_once(tmp_path_factory, "classifier", lambda into: _train_classifier(cifar10_root, into))
    return folder / "cifar_resnet20.safetensors"


def _train_classifier(cifar10_root: Path, into: Path) -> Path:
    import torch.nn.functional as F

    from resnetlab import create_model, save_weights
    from resnetlab.data.datasets import decode_files
    from resnetlab.data.folders import scan_split

    torch.manual_seed(0)
    split = scan_split(cifar10_root / "train", CLASSIFIER_TRAIN_PER_CLASS)
    class_names = list(split.class_names)
    images, _, _ = decode_files(split.files, (32, 32))  # N x 3 x 32 x 32 uint8
    labels = torch.tensor(split.labels)

    model = create_model("cifar_resnet20")
    mean = torch.tensor(model.preprocessing.mean).view(1, 3, 1, 1) * 255
    std = torch.tensor(model.preprocessing.std).view(1, 3, 1, 1) * 255
    # channels_last runs these small convolutions about twice as fast on a CPU.
    model = model.to(memory_format=torch.channels_last).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=CLASSIFIER_LR, momentum=0.9,
                                weight_decay=5e-4, nesterov=True)
    steps_per_epoch = len(images) // CLASSIFIER_BATCH
    total_steps = CLASSIFIER_EPOCHS * steps_per_epoch
    for step in range(total_steps):
        if step % steps_per_epoch == 0:
            order = torch.randperm(len(images))
        batch = order[step % steps_per_epoch * CLASSIFIER_BATCH:][:CLASSIFIER_BATCH]
        x = images[batch]
        x = torch.where(torch.rand(len(x), 1, 1, 1) < 0.5, x.flip(3), x)  # mirror half of them
        x = ((x.float() - mean) / std).contiguous(memory_format=torch.channels_last)
        for group in optimizer.param_groups:
            group["lr"] = CLASSIFIER_LR * (1 - step / total_steps)
        loss = F.cross_entropy(model(x), labels[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return save_weights(model.eval(), into / "cifar_resnet20.safetensors", class_names=class_names)
