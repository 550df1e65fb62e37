"""Pretrained weights by name: the catalog fits its sources, and files are found, fetched and checked offline-first.

Nothing here reaches the network: downloads come from a loopback HTTP server that the tests fill with files
they make, under catalog entries made for them.
"""
from __future__ import annotations

import hashlib
import http.server
import json
import math
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import timm
import torch
import torchvision
from PIL import Image
from safetensors.torch import save_file

from resnetlab import CheckpointError, ConfigError, Preprocessing, create_model, list_pretrained, load_weights, pretrained_info
from resnetlab.backbones import fpn
from resnetlab.cli import main
from resnetlab.complexity import count_parameters
from resnetlab.deploy.files import load_deployed
from resnetlab.models import load_model
from resnetlab.pretrained import catalog, class_names, default_weights, get_weights
from resnetlab.pretrained.catalog import PretrainedWeights, WeightsFile
from resnetlab.pretrained.store import SIDECAR_SUFFIX, fetch

REPOSITORY = Path(__file__).resolve().parents[1]
TAGS = list_pretrained()


# --- the catalog against its sources -------------------------------------------------------------------------

def source_model(entry: PretrainedWeights, tag: str) -> torch.nn.Module:
    """The network the tag's file comes from, as its source builds it (on the meta device: shapes only)."""
    if entry.source == "torchvision" and tag == "torchvision":
        return torchvision.models.get_model(entry.arch, weights=None)
    return timm.create_model(entry.tag.split(".")[0], num_classes=entry.num_classes, pretrained=False)


def published_preprocessing(entry: PretrainedWeights) -> Preprocessing:
    """The evaluation input the source itself gives the tag: torchvision's transforms, timm's test-time config."""
    if entry.source == "torchvision":
        arch, tag = entry.tag.split(".")
        enum = torchvision.models.get_model_weights(arch)
        transform = enum["IMAGENET1K_V2" if tag == "tv2_in1k" else "IMAGENET1K_V1"].transforms()
        return Preprocessing(transform.crop_size[0], transform.resize_size[0], transform.mean, transform.std,
                             transform.interpolation.value)
    config = timm.data.resolve_data_config(pretrained_cfg=timm.models.get_pretrained_cfg(entry.tag).to_dict(),
                                           use_test_size=True)
    size = config["input_size"][-1]
    return Preprocessing(size, math.floor(size / config["crop_pct"]), config["mean"], config["std"],
                         config["interpolation"])


@pytest.mark.parametrize("tag", TAGS)
def test_every_tag_builds_and_takes_a_state_dict_in_its_sources_layout(tag):
    entry = get_weights(tag)
    layouts = ["torchvision", "timm"] if entry.source == "torchvision" else ["timm"]  # tv tags: timm's hub copy too
    with torch.device("meta"):
        ours = create_model(tag)
        for layout in layouts:
            theirs = source_model(entry, layout)
            report = load_weights(ours, theirs.state_dict())
            assert not report.head_reinitialized and report.adapted_in_chans is None
            assert count_parameters(theirs) == entry.params == count_parameters(ours)
    assert ours.config.num_classes == entry.num_classes
    assert ours.preprocessing == entry.eval_preprocessing
    assert entry.eval_preprocessing == published_preprocessing(entry)
    assert entry.files and all(spec.url.startswith("https://") for spec in entry.files)
    assert entry.label_set is None or len(class_names(entry.label_set)) == entry.num_classes


def test_the_catalog_holds_every_torchvision_and_timm_family_weight():
    assert len(TAGS) >= 208  # timm 1.0.31's pretrained tags of the family
    torchvision_tags = [tag for tag in TAGS if get_weights(tag).source == "torchvision"]
    assert len(torchvision_tags) == 17 and "resnext101_64x4d.tv_in1k" in torchvision_tags
    tv2 = pretrained_info("resnet50.tv2_in1k")
    assert tv2["url"] == torchvision.models.ResNet50_Weights.IMAGENET1K_V2.url
    assert tv2["files"][0]["sha256_prefix"] == "11ad3fa6" and tv2["top1"] == 80.858
    assert tv2["preprocessing"]["resize_size"] == 232 and tv2["preprocessing"]["input_size"] == 224
    assert tv2["license"] == "bsd-3-clause" and tv2["num_classes"] == 1000


def test_the_shipped_catalog_is_what_the_script_renders_from_torchvision_and_timm():
    result = subprocess.run([sys.executable, "scripts/make_pretrained_registry.py", "--check"], cwd=REPOSITORY,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_the_default_tag_is_the_best_published_imagenet_one():
    assert default_weights("resnet50").tag == "resnet50.a1_in1k"  # 81.214, above tv2's 80.858
    assert default_weights("resnetv2_50x1_bit").label_set == "imagenet-1k"  # not the 21k one
    scores = [get_weights(t).top1 for t in TAGS if get_weights(t).arch == "resnet50" and get_weights(t).top1]
    assert default_weights("resnet50").top1 == max(scores)
    with pytest.raises(ConfigError, match="no ImageNet-1k pretrained weights"):
        default_weights("cifar_resnet20")


def test_an_alias_finds_the_weights_of_the_network_it_names():
    assert get_weights("se_resnet50.a1_in1k") is get_weights("seresnet50.a1_in1k")
    assert "seresnet50.a1_in1k" in list_pretrained("se_resnet50.*")


def test_an_unknown_tag_is_one_line_naming_the_tags_there_are():
    with pytest.raises(ConfigError) as error:
        create_model("resnet50.a9_in1k", pretrained=True)
    assert "resnet50.a1_in1k" in str(error.value) and "\n" not in str(error.value)
    with pytest.raises(ConfigError, match="unknown model"):
        create_model("resnet51", pretrained=True)
    with pytest.raises(ConfigError, match="names its weights already"):
        create_model("resnet50.a1_in1k", pretrained="tv_in1k")


def test_weights_list_shows_the_published_figures(capsys):
    assert main(["weights", "list", "resnet50*"]) == 0
    rows = capsys.readouterr().out.splitlines()
    tv2 = next(line for line in rows if "resnet50.tv2_in1k" in line)
    tv = next(line for line in rows if "resnet50.tv_in1k" in line)
    assert "80.858" in tv2 and "25.56M" in tv2 and "bsd-3-clause" in tv2 and "176/224" in tv2
    assert "76.13" in tv and "no" in tv.split()[-2:]
    assert not any("resnet101" in line for line in rows)
    assert main(["weights", "list", "hrnet_w18.*", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert {item["tag"] for item in listed} == set(list_pretrained("hrnet_w18.*"))
    assert all(item["cached"] is False and "preprocessing" in item for item in listed)


# --- files: found, fetched, checked ---------------------------------------------------------------------------

PREPROCESSING = {"train_input_size": 32, "input_size": 40, "resize_size": 44, "crop_pct": 0.91,
                 "interpolation": "bicubic", "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}


def made_entry(tag: str, *files: WeightsFile, num_classes: int = 1000) -> PretrainedWeights:
    return PretrainedWeights(tag=tag, arch=tag.split(".")[0], num_classes=num_classes, label_set="imagenet-1k",
                             source="timm", files=files, params=0, file_mb=0.0, preprocessing=PREPROCESSING,
                             license="apache-2.0", top1=None, top5=None, metrics_source=None, origin=None, paper=None)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class WeightsServer(http.server.ThreadingHTTPServer):
    """Serves ``folder``'s files as a mirror and as the hub does, and misbehaves on request.

    /files/NAME: the file, honouring Range; /hub/NAME: a redirect to it announcing a SHA-256 in X-Linked-Etag;
    /drop/NAME: half the file, then the connection closes; /norange/NAME: the whole file whatever the Range;
    /error/NAME: a 500; /html/NAME: a login page.
    """

    def __init__(self, folder: Path):
        super().__init__(("127.0.0.1", 0), WeightsHandler)
        self.folder, self.announced, self.ranges, self.requests = folder, {}, [], []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_port}"


class WeightsHandler(http.server.BaseHTTPRequestHandler):
    def log_message(self, format, *args):
        pass

    def do_GET(self):
        self.server.requests.append(self.path)
        _, route, name = self.path.split("/", 2)
        path = self.server.folder / name
        if route == "error":
            self.send_error(500, "Internal Server Error")
        elif route == "html":
            self._send(200, b"<!DOCTYPE html><html><body>Please log in</body></html>", "text/html")
        elif route == "hub":
            self.send_response(302)
            self.send_header("Location", f"/files/{name}")
            self.send_header("X-Linked-Etag", f'"{self.server.announced.get(name, "")}"')
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif not path.is_file():
            self.send_error(404, "Not Found")
        elif route == "drop":
            data = path.read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            self.close_connection = True
        else:
            data, start = path.read_bytes(), 0
            if self.headers.get("Range") and route != "norange":
                start = int(self.headers["Range"].removeprefix("bytes=").rstrip("-"))
                self.server.ranges.append(start)
            self._send(206 if start else 200, data[start:], "application/octet-stream")

    def _send(self, code: int, body: bytes, kind: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture()
def server(tmp_path):
    folder = tmp_path / "served"
    folder.mkdir()
    server = WeightsServer(folder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join()


@pytest.fixture()
def weights_dir(tmp_path, monkeypatch):
    directory = tmp_path / "weights"
    monkeypatch.setenv("RESNETLAB_WEIGHTS_DIR", str(directory))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-hub"))
    for name in ("RESNETLAB_WEIGHTS_URL", "RESNETLAB_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    return directory


@pytest.fixture(scope="module")
def trained():
    """A small network's weights with a 1000-class head, standing in for a published file."""
    torch.manual_seed(0)
    return create_model("cifar_resnet20", num_classes=1000).eval()


def publish(model: torch.nn.Module, folder: Path, name: str) -> Path:
    path = folder / name
    if path.suffix == ".safetensors":
        save_file(model.state_dict(), path)
    else:
        torch.save(model.state_dict(), path)
    return path


def with_entries(monkeypatch, *entries: PretrainedWeights) -> None:
    known = {**catalog._catalog(), **{entry.tag: entry for entry in entries}}
    monkeypatch.setattr(catalog, "_catalog", lambda: known)


def leftovers(directory: Path) -> list[str]:
    """What a failed fetch left in the weights folder, besides the lock that serialises fetches."""
    return sorted(p.name for p in directory.iterdir() if p.suffix != ".lock") if directory.exists() else []


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_a_tag_downloads_from_the_mirror_checked_and_comes_with_its_preprocessing_and_class_names(
        trained, server, weights_dir, monkeypatch):
    published = publish(trained, server.folder, "cifar_resnet20.test_in1k.safetensors")
    spec = WeightsFile(url="https://example.invalid/never-used", file_name=published.name, format="safetensors",
                       sha256=sha256(published))
    with_entries(monkeypatch, made_entry("cifar_resnet20.test_in1k", spec))
    monkeypatch.setenv("RESNETLAB_WEIGHTS_URL", f"{server.url}/files/")

    model = create_model("cifar_resnet20", pretrained="test_in1k")
    assert same_weights(model, trained) and (weights_dir / published.name).is_file()
    assert model.class_names[207] == "golden retriever" and len(model.class_names) == 1000
    assert model.preprocessing.input_size == 40 and model.preprocessing.interpolation == "bicubic"
    published.unlink()  # found in the weights folder from now on: no server needed
    again = load_model("cifar_resnet20.test_in1k")
    assert same_weights(again, trained) and again.class_names == model.class_names
    assert not list(weights_dir.glob("*.part"))


def test_a_new_class_count_fine_tunes_from_the_tag_with_a_new_head(trained, server, weights_dir, monkeypatch):
    published = publish(trained, server.folder, "cifar_resnet20.test_in1k.pth")
    spec = WeightsFile(url=f"{server.url}/files/{published.name}", file_name=published.name, format="pth",
                       sha256_prefix=sha256(published)[:8])
    with_entries(monkeypatch, made_entry("cifar_resnet20.test_in1k", spec))
    model = create_model("cifar_resnet20.test_in1k", num_classes=3, pretrained=True)
    assert model.fc.out_features == 3 and model.class_names is None
    assert torch.equal(model.conv1.weight, trained.conv1.weight)


def test_an_interrupted_download_resumes_where_it_stopped(trained, server, weights_dir, monkeypatch):
    published = publish(trained, server.folder, "cifar_resnet20.test_in1k.safetensors")
    spec = WeightsFile(url=f"{server.url}/drop/{published.name}", file_name=published.name, format="safetensors",
                       sha256=sha256(published))
    with_entries(monkeypatch, made_entry("cifar_resnet20.test_in1k", spec))
    with pytest.raises(CheckpointError, match="to resume from"):
        fetch("cifar_resnet20.test_in1k", progress=False)
    part = weights_dir / (published.name + ".part")
    half = published.stat().st_size // 2
    assert part.stat().st_size == half and not (weights_dir / published.name).exists()

    monkeypatch.setenv("RESNETLAB_WEIGHTS_URL", f"{server.url}/files")
    path = fetch("cifar_resnet20.test_in1k", progress=False)
    assert server.ranges == [half]  # only the rest was asked for
    assert sha256(path) == sha256(published) and not part.exists()


def test_fetches_that_ask_for_the_same_file_at_once_download_it_once(trained, server, weights_dir, monkeypatch):
    published = publish(trained, server.folder, "cifar_resnet20.test_in1k.safetensors")
    spec = WeightsFile(url=f"{server.url}/files/{published.name}", file_name=published.name, format="safetensors",
                       sha256=sha256(published))
    with_entries(monkeypatch, made_entry("cifar_resnet20.test_in1k", spec))
    paths = []
    # Threads, as ranks would be processes: the lock is a file lock, held per open file, so it serialises both.
    ranks = [threading.Thread(target=lambda: paths.append(fetch("cifar_resnet20.test_in1k", progress=False)))
             for _ in range(4)]
    for rank in ranks:
        rank.start()
    for rank in ranks:
        rank.join()
    assert len(paths) == 4 and len(set(paths)) == 1 and sha256(paths[0]) == sha256(published)
    assert server.requests == [f"/files/{published.name}"]


def test_a_file_that_does_not_match_its_checksum_is_discarded(trained, server, weights_dir, monkeypatch):
    published = publish(trained, server.folder, "cifar_resnet20.test_in1k.safetensors")
    spec = WeightsFile(url=f"{server.url}/files/{published.name}", file_name=published.name, format="safetensors",
                       sha256="0" * 64)
    with_entries(monkeypatch, made_entry("cifar_resnet20.test_in1k", spec))
    with pytest.raises(CheckpointError) as error:
        create_model("cifar_resnet20.test_in1k", pretrained=True)
    assert "not the published" in str(error.value) and "discarded" in str(error.value)
    assert leftovers(weights_dir) == []


@pytest.mark.parametrize("route, says", [("error", "500"), ("html", "HTML page"), ("files/missing", "404")])
def test_a_server_that_fails_leaves_nothing_behind(route, says, trained, server, weights_dir, monkeypatch):
    publish(trained, server.folder, "cifar_resnet20.test_in1k.safetensors")
    spec = WeightsFile(url=f"{server.url}/{route}/cifar_resnet20.test_in1k.safetensors",
                       file_name="cifar_resnet20.test_in1k.safetensors", format="safetensors", sha256="0" * 64)
    with_entries(monkeypatch, made_entry("cifar_resnet20.test_in1k", spec))
    with pytest.raises(CheckpointError) as error:
        fetch("cifar_resnet20.test_in1k", progress=False)
    assert says in str(error.value) and "\n" not in str(error.value)
    assert leftovers(weights_dir) == []


def test_the_hub_announced_checksum_is_checked_and_recorded(trained, server, weights_dir, monkeypatch):
    published = publish(trained, server.folder, "cifar_resnet20.test_in1k.safetensors")
    spec = WeightsFile(url=f"{server.url}/hub/{published.name}", file_name=published.name, format="safetensors",
                       hf_hub_id="timm/cifar_resnet20.test_in1k")  # no checksum in the registry: the hub's
    with_entries(monkeypatch, made_entry("cifar_resnet20.test_in1k", spec))
    server.announced[published.name] = "f" * 64
    with pytest.raises(CheckpointError, match="not the published"):
        fetch("cifar_resnet20.test_in1k", progress=False)
    server.announced[published.name] = sha256(published)
    path = fetch("cifar_resnet20.test_in1k", progress=False)
    assert (weights_dir / (published.name + SIDECAR_SUFFIX)).read_text().strip() == sha256(published)
    path.write_bytes(path.read_bytes()[:-10])  # damaged later: the recorded checksum catches it, and it is fetched again
    assert sha256(fetch("cifar_resnet20.test_in1k", progress=False)) == sha256(published)
    assert server.requests.count(f"/files/{published.name}") == 3  # the refused one, the first good one, the repair
    (weights_dir / (published.name + SIDECAR_SUFFIX)).unlink()  # a copy whose checksum is lost: fetched again too
    assert sha256(fetch("cifar_resnet20.test_in1k", progress=False)) == sha256(published)
    assert (weights_dir / (published.name + SIDECAR_SUFFIX)).is_file()
    monkeypatch.setenv("RESNETLAB_OFFLINE", "1")  # offline, a damaged copy is an error, and is removed
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(CheckpointError, match="removed"):
        fetch("cifar_resnet20.test_in1k", progress=False)
    assert not path.exists()


def test_a_mirror_without_a_checksum_for_an_unchecked_file_is_refused_unless_it_serves_one(
        trained, server, weights_dir, monkeypatch):
    published = publish(trained, server.folder, "cifar_resnet20.test_in1k.safetensors")
    spec = WeightsFile(url="https://example.invalid/x", file_name=published.name, format="safetensors",
                       hf_hub_id="timm/cifar_resnet20.test_in1k")
    with_entries(monkeypatch, made_entry("cifar_resnet20.test_in1k", spec))
    monkeypatch.setenv("RESNETLAB_WEIGHTS_URL", f"{server.url}/files")
    with pytest.raises(CheckpointError, match="the mirror has no cifar_resnet20.test_in1k.safetensors.sha256"):
        fetch("cifar_resnet20.test_in1k", progress=False)
    (server.folder / (published.name + SIDECAR_SUFFIX)).write_text(sha256(published) + "\n")
    assert sha256(fetch("cifar_resnet20.test_in1k", progress=False)) == sha256(published)
    assert not any("/x" in request for request in server.requests)  # the hub URL is never asked: the mirror is


def test_a_server_that_ignores_the_range_starts_the_file_over(trained, server, weights_dir, monkeypatch):
    published = publish(trained, server.folder, "cifar_resnet20.test_in1k.safetensors")
    spec = WeightsFile(url=f"{server.url}/norange/{published.name}", file_name=published.name,
                       format="safetensors", sha256=sha256(published))
    with_entries(monkeypatch, made_entry("cifar_resnet20.test_in1k", spec))
    weights_dir.mkdir()
    (weights_dir / (published.name + ".part")).write_bytes(b"stale bytes of another attempt")
    assert sha256(fetch("cifar_resnet20.test_in1k", progress=False)) == sha256(published)


def test_a_weights_folder_that_cannot_be_written_is_one_line(tmp_path, monkeypatch):
    (tmp_path / "a-file").write_text("not a folder")
    monkeypatch.setenv("RESNETLAB_WEIGHTS_DIR", str(tmp_path / "a-file" / "weights"))
    monkeypatch.setenv("RESNETLAB_WEIGHTS_URL", "http://127.0.0.1:9")
    with pytest.raises(CheckpointError) as error:
        fetch("resnet18.tv_in1k", progress=False)
    assert "cannot write to" in str(error.value) and "RESNETLAB_WEIGHTS_DIR" in str(error.value)


@pytest.mark.parametrize("how", ["offline mode", "no network"])
def test_with_no_file_and_no_network_the_error_says_where_to_put_it_and_how_to_fetch_it(how, weights_dir,
                                                                                            monkeypatch):
    if how == "offline mode":
        monkeypatch.setenv("RESNETLAB_OFFLINE", "1")
    else:
        monkeypatch.setenv("RESNETLAB_WEIGHTS_URL", "http://127.0.0.1:9")  # nothing listens on the discard port
    with pytest.raises(CheckpointError) as error:
        create_model("resnet18", pretrained="tv_in1k")
    message = str(error.value)
    assert message.startswith("resnet18.tv_in1k: ") and "\n" not in message
    assert "resnet18-f37072fd.pth" in message and str(weights_dir) in message
    assert "resnetlab weights download resnet18.tv_in1k" in message


def test_a_file_in_the_hugging_face_cache_is_found_and_checked_by_its_blob_name(trained, tmp_path, weights_dir,
                                                                                 monkeypatch):
    monkeypatch.setenv("RESNETLAB_OFFLINE", "1")
    repo = tmp_path / "hf-hub" / "models--timm--cifar_resnet20.test_in1k"
    blob = publish(trained, tmp_path, "model.safetensors")
    digest = sha256(blob)
    (repo / "blobs").mkdir(parents=True)
    blob.rename(repo / "blobs" / digest)
    (repo / "snapshots" / "abc123").mkdir(parents=True)
    (repo / "snapshots" / "abc123" / "model.safetensors").symlink_to(f"../../blobs/{digest}")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    spec = WeightsFile(url="https://example.invalid/x", file_name="cifar_resnet20.test_in1k.safetensors",
                       format="safetensors", hf_hub_id="timm/cifar_resnet20.test_in1k")
    with_entries(monkeypatch, made_entry("cifar_resnet20.test_in1k", spec))
    assert same_weights(create_model("cifar_resnet20.test_in1k", pretrained=True), trained)

    with open(repo / "blobs" / digest, "r+b") as file:  # a blob whose content no longer matches its name
        file.seek(200)
        file.write(b"\x00" * 8)
    with pytest.raises(CheckpointError, match="not the published"):
        create_model("cifar_resnet20.test_in1k", pretrained=True)
    assert (repo / "blobs" / digest).exists()  # the hub's cache is not ours to delete from


def test_an_error_page_saved_under_the_file_name_is_never_loaded(trained, weights_dir, monkeypatch):
    monkeypatch.setenv("RESNETLAB_OFFLINE", "1")  # online it would be removed and fetched again
    weights_dir.mkdir()
    (weights_dir / "resnet18-f37072fd.pth").write_text("<!DOCTYPE html><html>Access denied</html>")
    with pytest.raises(CheckpointError, match="removed"):
        create_model("resnet18.tv_in1k", pretrained=True)
    assert not (weights_dir / "resnet18-f37072fd.pth").exists()


def test_weights_import_checks_the_file_and_places_it(trained, tmp_path, weights_dir, monkeypatch, capsys):
    published = publish(trained, tmp_path, "downloaded-by-hand.pth")
    checked = WeightsFile(url="https://example.invalid/a", file_name="cifar_resnet20_a-0000.pth", format="pth",
                          sha256_prefix=sha256(published)[:8])
    unchecked = WeightsFile(url="https://example.invalid/b", file_name="cifar_resnet20.test_b.safetensors",
                            format="safetensors", hf_hub_id="timm/cifar_resnet20.test_b")
    with_entries(monkeypatch, made_entry("cifar_resnet20.test_a", checked),
                 made_entry("cifar_resnet20.test_b", unchecked))
    assert main(["weights", "import", str(published), "--tag", "cifar_resnet20.test_a"]) == 0
    assert sha256(weights_dir / checked.file_name) == sha256(published)

    assert main(["weights", "import", str(published), "--tag", "resnet18.tv_in1k"]) == 2
    assert "not one of resnet18.tv_in1k's published files" in capsys.readouterr().err

    hub_copy = publish(trained, tmp_path, "model.safetensors")  # no published checksum: must fit the architecture
    assert main(["weights", "import", str(hub_copy), "--tag", "cifar_resnet20.test_b"]) == 0
    assert (weights_dir / (unchecked.file_name + SIDECAR_SUFFIX)).read_text().strip() == sha256(hub_copy)
    wrong = publish(create_model("cifar_resnet32", num_classes=1000), tmp_path, "other.safetensors")
    assert main(["weights", "import", str(wrong), "--tag", "cifar_resnet20.test_b"]) == 2
    assert "does not fit" in capsys.readouterr().err

    capsys.readouterr()
    assert main(["weights", "verify"]) == 0
    assert capsys.readouterr().out.count("ok ") == 2
    (weights_dir / checked.file_name).write_bytes(b"\x80" + b"\x00" * 100)  # damaged
    assert main(["weights", "verify"]) == 2
    captured = capsys.readouterr()
    assert "BAD" in captured.out and "1 of 2" in captured.err and not (weights_dir / checked.file_name).exists()


@pytest.fixture()
def placed(trained, weights_dir, monkeypatch):
    """A test tag whose checked file is already in the weights folder."""
    weights_dir.mkdir()
    path = publish(trained, weights_dir, "cifar_resnet20.test_in1k.safetensors")
    spec = WeightsFile(url="https://example.invalid/x", file_name=path.name, format="safetensors", sha256=sha256(path))
    with_entries(monkeypatch, made_entry("cifar_resnet20.test_in1k", spec))
    monkeypatch.setenv("RESNETLAB_OFFLINE", "1")
    return "cifar_resnet20.test_in1k"


def test_a_tag_works_wherever_weights_are_taken(placed, trained):
    model = create_model("cifar_resnet20", num_classes=1000)
    load_weights(model, placed)
    assert same_weights(model, trained)
    backbone = fpn("cifar_resnet20", weights=placed)
    assert torch.equal(backbone.body.conv1.weight, trained.conv1.weight)
    deployed = load_deployed(placed)
    assert deployed.class_names[207] == "golden retriever" and deployed.num_classes == 1000
    features = create_model(placed, pretrained=True, features_only=True)
    assert torch.equal(features.conv1.weight, trained.conv1.weight)


def test_predict_on_a_tag_prints_class_names(placed, tmp_path, capsys):
    image = tmp_path / "photo.png"
    Image.new("RGB", (48, 40), (200, 120, 40)).save(image)
    assert main(["predict", "--checkpoint", placed, str(image), "--json"]) == 0
    predictions = json.loads(capsys.readouterr().out)
    names = set(class_names("imagenet-1k"))
    assert all(p["label"] in names for item in predictions for p in item["top"])


def test_the_fine_tuning_recipe_starts_from_a_tag():
    from resnetlab.config import load_recipe

    weights = load_recipe("finetune_resnet18")["model"]["weights"]
    assert weights == "resnet18.tv_in1k" and get_weights(weights).source == "torchvision"


def images_in(folder: Path, count: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for number in range(count):
        Image.new("RGB", (48, 40), (40 * number % 256, 120, 200)).save(folder / f"{number}.png")
    return folder


def test_export_quantize_embed_and_search_take_a_tag(placed, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["export", "--checkpoint", placed, "--format", "onnx"]) == 0
    exported = load_deployed(f"{placed}.onnx")  # named after the whole tag, in the working folder
    assert exported.class_names[207] == "golden retriever" and exported.arch == "cifar_resnet20"

    calib = images_in(tmp_path / "calib", 8)
    assert main(["quantize", "--checkpoint", placed, "--calib", str(calib), "--calib-images", "8"]) == 0
    assert (tmp_path / f"{placed}.int8.onnx").is_file() and "fp32 (PyTorch)" in capsys.readouterr().out

    gallery = images_in(tmp_path / "gallery" / "things", 3)
    assert main(["embed", "--checkpoint", placed, str(gallery.parent), "--out", "index.npz"]) == 0
    capsys.readouterr()
    assert main(["search", "--index", "index.npz", str(gallery / "0.png"), "--json"]) == 0  # the index names the tag
    hits = json.loads(capsys.readouterr().out)
    assert hits[0]["path"].endswith("0.png") and len(hits) == 3


def test_the_compression_chain_starts_from_a_tag(placed, tmp_path):
    for split in ("train", "val"):
        for name in ("tench", "goldfish"):  # ImageNet's first two classes: the tag's head knows them
            images_in(tmp_path / "data" / split / name, 2)
    out = tmp_path / "chain"
    assert main(["compress", "--checkpoint", placed, "--data", str(tmp_path / "data"), "--steps", "export",
                 "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report[0]["path"] == str(out / "0-original" / "original.safetensors")
    assert load_model(report[0]["path"]).class_names[207] == "golden retriever"


def test_train_fine_tunes_from_a_tag_with_a_new_head(placed, tmp_path, caplog):
    for split in ("train", "val"):
        for name in ("ants", "bees"):
            images_in(tmp_path / "data" / split / name, 4)
    out = tmp_path / "run"
    assert main(["train", "--model", "cifar_resnet20", "--weights", placed, "--data", str(tmp_path / "data"),
                 "--epochs", "1", "--batch-size", "4", "--out", str(out)]) == 0
    assert "the classifier head was re-initialised" in caplog.text
    tuned = load_model(out / "best.safetensors")
    assert tuned.class_names == ["ants", "bees"] and tuned.fc.out_features == 2
