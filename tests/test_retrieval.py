"""Image retrieval with a CIFAR-10-trained ResNet: embeddings, the index file, search, the CLI."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

from resnetlab import ConfigError, create_model, load_model
from resnetlab.cli import main
from resnetlab.retrieval import (EmbeddingIndex, embed_images, find_images, folder_labels, load_index,
                                 precision_at_k, save_index, search)

TEST_PER_CLASS = 100  # 1,000 real test images, none seen in training
# Measured on these 1,000 images: 0.30 for the fixture's classifier (about 40% accurate),
# 0.17 for the same network untrained, 0.22 for raw pixels; chance is 0.10.
MIN_PRECISION_AT_10 = 0.25
MIN_GAIN_OVER_UNTRAINED = 0.08


@pytest.fixture(scope="module")
def test_images(cifar10_root):
    paths, labels = [], []
    for label, folder in enumerate(sorted((cifar10_root / "test").iterdir())):
        found = sorted(folder.glob("*.jpg"))[:TEST_PER_CLASS]
        paths += found
        labels += [label] * len(found)
    return paths, torch.tensor(labels)


@pytest.fixture(scope="module")
def small_folder(cifar10_root, tmp_path_factory):
    """gallery/<class>/ with four real test images of each of three classes, and one broken file."""
    root = tmp_path_factory.mktemp("gallery")
    for name in ("cat", "ship", "truck"):
        (root / name).mkdir()
        for source in sorted((cifar10_root / "test" / name).glob("*.jpg"))[:4]:
            shutil.copy(source, root / name / source.name)
    (root / "ship" / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    (root / "notes.txt").write_text("not an image: ignored")
    return root


def run(capsys, *argv):
    code = main([str(arg) for arg in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_precision_at_10_on_real_test_images_comes_from_training(cifar_classifier, test_images):
    paths, labels = test_images
    embedded = embed_images(load_model(cifar_classifier), paths, batch_size=128, progress=False)
    assert embedded.paths == paths and not embedded.skipped
    precision = precision_at_k(embedded.embeddings, labels, k=10)
    torch.manual_seed(0)
    untrained = embed_images(create_model("cifar_resnet20"), paths, batch_size=128, progress=False)
    baseline = precision_at_k(untrained.embeddings, labels, k=10)
    print(f"precision@10 over {len(paths)} CIFAR-10 test images: {precision:.3f} trained, "
          f"{baseline:.3f} untrained")
    assert precision >= MIN_PRECISION_AT_10
    assert precision >= baseline + MIN_GAIN_OVER_UNTRAINED


def test_embeddings_are_unit_length_and_independent_of_the_batch_size(cifar_classifier, test_images):
    model = load_model(cifar_classifier)
    paths = test_images[0][::50]  # 20 images, two of each class
    whole = embed_images(model, paths, batch_size=64, progress=False).embeddings
    pieces = embed_images(model, paths, batch_size=3, progress=False).embeddings
    assert whole.shape == (20, model.num_features)
    assert torch.allclose(whole.norm(dim=1), torch.ones(20), atol=1e-5)
    assert torch.allclose(whole, pieces, atol=1e-5)


def test_unreadable_files_are_skipped_and_listed(cifar_classifier, small_folder):
    paths = find_images(small_folder)
    assert len(paths) == 13 and all(path.suffix == ".jpg" for path in paths)  # notes.txt ignored
    embedded = embed_images(load_model(cifar_classifier), paths, progress=False)
    assert len(embedded.paths) == 12 and len(embedded.embeddings) == 12
    (bad,) = embedded.skipped
    assert bad.path.name == "broken.jpg" and "broken.jpg" in bad.reason


def test_index_file_round_trips(tmp_path):
    index = EmbeddingIndex(torch.nn.functional.normalize(torch.randn(5, 8), dim=1),
                           [f"/images/{i}.jpg" for i in range(5)], labels=list("aabbc"),
                           checkpoint="/weights/model.safetensors")
    loaded = load_index(save_index(index, tmp_path / "index.npz"))
    assert torch.equal(loaded.embeddings, index.embeddings)
    assert (loaded.paths, loaded.labels, loaded.checkpoint) == (index.paths, index.labels, index.checkpoint)
    unlabelled = load_index(save_index(EmbeddingIndex(index.embeddings, index.paths), tmp_path / "u.npz"))
    assert unlabelled.labels is None and unlabelled.checkpoint is None


def test_search_ranks_by_cosine_similarity():
    gallery = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8], [-1.0, 0.0]])
    index = EmbeddingIndex(gallery, ["east", "north", "north-east", "west"])
    scores, positions = search(index, torch.tensor([[1.0, 2.0]]), k=3)  # queries need not be unit length
    assert positions.tolist() == [[2, 1, 0]]
    assert torch.allclose(scores, torch.tensor([[0.6 + 1.6, 2.0, 1.0]]) / 5 ** 0.5)
    _, everything = search(index, torch.tensor([[1.0, 0.0]]), k=10)
    assert everything.tolist() == [[0, 2, 1, 3]]  # k beyond the index: all of it, best first
    with pytest.raises(ConfigError, match="k must be at least 1"):
        search(index, torch.tensor([[1.0, 0.0]]), k=0)
    with pytest.raises(ConfigError, match="queries have 3 dimensions and the index 2"):
        search(index, torch.ones(1, 3))


def test_precision_at_k_counts_same_label_neighbours():
    # Two tight pairs far apart: each item's nearest other is its pair-mate.
    embeddings = torch.tensor([[1.0, 0.0], [0.99, 0.1], [0.0, 1.0], [0.1, 0.99]])
    assert precision_at_k(embeddings, torch.tensor([0, 0, 1, 1]), k=1) == 1.0
    assert precision_at_k(embeddings, torch.tensor([0, 1, 0, 1]), k=1) == 0.0
    # k=3 takes every other item: 1 of 3 shares the label.
    assert precision_at_k(embeddings, torch.tensor([0, 0, 1, 1]), k=3, chunk=3) == pytest.approx(1 / 3)


def test_folder_labels_only_when_every_image_is_in_a_class_folder(tmp_path):
    assert folder_labels([tmp_path / "cat" / "1.jpg", tmp_path / "dog" / "2.jpg"], tmp_path) == ["cat", "dog"]
    assert folder_labels([tmp_path / "cat" / "1.jpg", tmp_path / "2.jpg"], tmp_path) is None


def test_cli_embed_then_search_finds_the_query_itself_first(capsys, cifar_classifier, small_folder, tmp_path):
    index_path = tmp_path / "index.npz"
    code, out, err = run(capsys, "embed", "--checkpoint", cifar_classifier, small_folder, "--out", index_path)
    assert code == 0
    assert "12 embeddings of dimension 64" in out and "1 unreadable files skipped" in out
    assert "broken.jpg" in err
    index = load_index(index_path)
    assert len(index.paths) == 12 and sorted(set(index.labels)) == ["cat", "ship", "truck"]

    query = sorted((small_folder / "truck").glob("*.jpg"))[2]
    code, out, _ = run(capsys, "search", "--index", index_path, query, "-k", "5")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith("5 nearest of 12")
    rank, score, label, path = lines[1].split()
    assert (rank, label, path) == ("1", "truck", str(query.resolve()))
    assert float(score) == pytest.approx(1.0, abs=1e-4)
    assert len(lines) == 6

    code, out, _ = run(capsys, "search", "--index", index_path, query, "-k", "3", "--json")
    hits = json.loads(out)
    assert [hit["rank"] for hit in hits] == [1, 2, 3]
    assert hits[0]["path"] == str(query.resolve()) and hits[0]["score"] == pytest.approx(1.0, abs=1e-4)
    assert hits[0]["score"] >= hits[1]["score"] >= hits[2]["score"]


@pytest.mark.parametrize("case", ["empty folder", "missing folder", "missing index", "not an index",
                                  "checkpoint as index", "bad query", "wrong suffix"])
def test_cli_errors_are_one_clear_line(capsys, cifar_classifier, small_folder, tmp_path, case):
    (tmp_path / "empty").mkdir()
    (tmp_path / "fake.npz").write_bytes(b"PK\x03\x04 truncated")
    argv, message = {
        "empty folder": (["embed", "--checkpoint", cifar_classifier, tmp_path / "empty", "--out",
                          tmp_path / "i.npz"], "holds no image files"),
        "missing folder": (["embed", "--checkpoint", cifar_classifier, tmp_path / "nowhere", "--out",
                            tmp_path / "i.npz"], "is not a folder"),
        "missing index": (["search", "--index", tmp_path / "none.npz", small_folder / "cat" / "0000.jpg"],
                          "does not exist; build one with `resnetlab embed"),
        "not an index": (["search", "--index", tmp_path / "fake.npz", small_folder / "cat" / "0000.jpg"],
                         "is not a readable index"),
        "checkpoint as index": (["search", "--index", cifar_classifier, small_folder / "cat" / "0000.jpg"],
                                "an index is an .npz file written by resnetlab embed, not "),
        "bad query": (["search", "--index", _built_index(cifar_classifier, small_folder, tmp_path),
                       small_folder / "ship" / "broken.jpg"], "broken.jpg"),
        "wrong suffix": (["embed", "--checkpoint", cifar_classifier, small_folder, "--out",
                          tmp_path / "index.json"], "--out must end in .npz"),
    }[case]
    code, _, err = run(capsys, *argv)
    assert code == 2
    assert err.startswith("resnetlab: error: ") and err.strip().count("\n") == 0 and message in err


def _built_index(checkpoint, folder, tmp_path):
    paths = find_images(folder)[:3]
    embedded = embed_images(load_model(checkpoint), paths, progress=False)
    return save_index(EmbeddingIndex(embedded.embeddings, [str(p) for p in embedded.paths],
                                     checkpoint=str(checkpoint)), tmp_path / "built.npz")
