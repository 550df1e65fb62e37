"""Odd and bad image files: the good ones decode to RGB uint8, the bad ones are listed and skipped."""
from __future__ import annotations

import dataclasses
import logging
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from resnetlab.config import DataConfig
from resnetlab.data import build_loaders
from resnetlab.data.decode import check_image_file, decode_image_file
from resnetlab.errors import DataError
from resnetlab.preprocessing import CIFAR10

RED, BLUE = (255, 0, 0), (0, 0, 255)
BAD = ("half.jpg", "empty.jpg", "notes.jpg")  # cut short, 0 bytes, text


def _marked_image(width: int, height: int) -> Image.Image:
    """Blue, with a red block in the top-left corner: shows where the top-left went after rotating."""
    image = Image.new("RGB", (width, height), BLUE)
    image.paste(RED, (0, 0, width // 3, height // 3))
    return image


@pytest.fixture(scope="module")
def odd_files(tmp_path_factory, cifar10_root) -> dict[str, Path]:
    """Each odd and bad file, written into train/birds of a two-class folder of real CIFAR images."""
    root = tmp_path_factory.mktemp("odd") / "data"
    for split, source in (("train", "train"), ("val", "test")):
        for name, source_class in (("planes", "airplane"), ("birds", "bird")):
            folder = root / split / name
            folder.mkdir(parents=True)
            for image in sorted((cifar10_root / source / source_class).iterdir())[:4]:
                shutil.copy(image, folder / image.name)
    odd = root / "train" / "birds"
    photo = Image.open(sorted((cifar10_root / "train" / "cat").iterdir())[0]).convert("RGB")
    files = {name: odd / name for name in (
        "gray.png", "palette.png", "rgba.png", "cmyk.jpg", "sixteen.png", "exif6.jpg", "one_pixel.png", *BAD)}
    photo.convert("L").save(files["gray.png"])
    photo.convert("P", palette=Image.Palette.ADAPTIVE).save(files["palette.png"])
    rgba = photo.convert("RGBA")
    rgba.paste((0, 0, 0, 0), (0, 16, 32, 32))  # bottom half fully transparent (and black underneath)
    rgba.save(files["rgba.png"])
    photo.convert("CMYK").save(files["cmyk.jpg"], quality=95)
    sixteen = np.zeros((8, 8), dtype=np.uint16)
    sixteen[0, :3] = (65535, 32768, 257)
    Image.fromarray(sixteen).save(files["sixteen.png"])  # mode I;16
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    _marked_image(48, 24).save(files["exif6.jpg"], exif=exif, quality=95)
    Image.new("RGB", (1, 1), (10, 200, 30)).save(files["one_pixel.png"])
    whole = (cifar10_root / "train" / "dog" / "0000.jpg").read_bytes()
    files["half.jpg"].write_bytes(whole[: len(whole) // 2])
    files["empty.jpg"].write_bytes(b"")
    files["notes.jpg"].write_text("this is a text file, not a JPEG\n")
    return files


@pytest.mark.parametrize("name", ["gray.png", "palette.png", "rgba.png", "cmyk.jpg", "sixteen.png",
                                  "one_pixel.png"])
def test_odd_but_good_images_decode_to_rgb_uint8(odd_files, name):
    image = decode_image_file(odd_files[name])
    assert image.dtype == torch.uint8 and image.shape == (3, *check_image_file(odd_files[name]))


def test_grayscale_and_palette_images_keep_their_pixels(odd_files):
    gray = decode_image_file(odd_files["gray.png"])
    assert torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2])
    assert torch.equal(gray[0], torch.from_numpy(np.array(Image.open(odd_files["gray.png"]))))
    palette = decode_image_file(odd_files["palette.png"])
    expected = np.asarray(Image.open(odd_files["palette.png"]).convert("RGB"))
    assert torch.equal(palette, torch.from_numpy(expected.copy()).permute(2, 0, 1))


def test_transparent_pixels_are_composited_on_white(odd_files):
    image = decode_image_file(odd_files["rgba.png"])
    assert (image[:, 16:, :] == 255).all()  # transparent black became white, not black
    opaque = np.asarray(Image.open(odd_files["rgba.png"]))[:16, :, :3]
    assert torch.equal(image[:, :16, :], torch.from_numpy(opaque.copy()).permute(2, 0, 1))


def test_cmyk_jpeg_comes_out_in_rgb_colours(odd_files):
    image = decode_image_file(odd_files["cmyk.jpg"]).float()
    reference = torch.from_numpy(np.asarray(Image.open(odd_files["cmyk.jpg"]).convert("RGB")).copy())
    assert (image - reference.permute(2, 0, 1).float()).abs().mean() < 2


def test_sixteen_bit_png_is_scaled_to_eight_bits_not_clipped(odd_files):
    image = decode_image_file(odd_files["sixteen.png"])
    assert image[:, 0, :4].tolist() == [[255, 128, 1, 0]] * 3


def test_exif_orientation_is_applied(odd_files):
    image = decode_image_file(odd_files["exif6.jpg"])
    assert image.shape == (3, 48, 24)  # stored 48 wide x 24 high, displayed rotated: 24 wide x 48 high
    # Rotating 90 degrees clockwise moves the red top-left block to the top-right corner.
    top_right, top_left = image[:, :10, -5:].float().mean((1, 2)), image[:, :10, :5].float().mean((1, 2))
    assert top_right[0] > 200 and top_right[2] < 60
    assert top_left[2] > 200 and top_left[0] < 60


@pytest.mark.parametrize("name, reason", [
    ("half.jpg", r"is not a readable image: (image file is truncated|Truncated File Read)"),
    ("empty.jpg", r"is empty \(0 bytes\)"),
    ("notes.jpg", r"is not a readable image: unknown format, or not an image at all"),
])
def test_bad_files_raise_a_data_error_naming_them(odd_files, name, reason):
    for check in (decode_image_file, check_image_file):
        with pytest.raises(DataError, match=f"^{re.escape(str(odd_files[name]))} {reason}"):
            check(odd_files[name])


@pytest.mark.parametrize("cache", ["memory", "none"])
def test_loaders_list_bad_files_once_skip_them_and_load_the_rest(odd_files, cache, caplog):
    root = odd_files["gray.png"].parents[2]
    config = DataConfig(data=str(root), cache=cache, batch_size=4, workers=0)
    with caplog.at_level(logging.WARNING, logger="resnetlab"):
        train_loader, val_loader, info = build_loaders(config, CIFAR10)
    assert sorted(bad.path.name for bad in info.bad_files) == sorted(BAD)
    for name in BAD:
        assert caplog.text.count(str(odd_files[name])) == 1
    assert info.num_train == 4 + 4 + 7  # real planes, real birds, the odd but good birds
    assert (info.image_size == (32, 32)) == (cache == "memory")
    seen = sum(len(labels) for _, labels in train_loader) + sum(len(labels) for _, labels in val_loader)
    assert seen == 12 + 8  # train drops its last partial batch of 3
    for images, _ in val_loader:
        assert images.shape[1:] == (3, 32, 32) and images.dtype == torch.float32


def test_bad_images_error_policy_stops_naming_the_file(odd_files):
    root = odd_files["gray.png"].parents[2]
    with pytest.raises(DataError, match=r"birds/(empty|half|notes)\.jpg .*and 2 more bad images"):
        build_loaders(DataConfig(data=str(root), cache="none", bad_images="error"), CIFAR10)


@pytest.fixture
def photo_folder(tmp_path, cifar10_root) -> Path:
    root = tmp_path / "data"
    for split, source in (("train", "train"), ("val", "test")):
        for name in ("cat", "dog"):
            (root / split / name).mkdir(parents=True)
            for image in sorted((cifar10_root / source / name).iterdir())[:4]:
                shutil.copy(image, root / split / name / image.name)
    return root


def test_a_file_that_breaks_after_the_check_is_replaced_not_fatal(photo_folder, caplog):
    config = DataConfig(data=str(photo_folder), cache="none", batch_size=8, workers=0)
    train_loader, _, _ = build_loaders(config, CIFAR10)
    broken = photo_folder / "train" / "cat" / "0001.jpg"
    broken.write_text("overwritten after the up-front check")
    with caplog.at_level(logging.WARNING, logger="resnetlab"):
        (images, labels), = list(train_loader)  # the epoch completes
    assert images.shape == (8, 3, 32, 32) and str(broken) in caplog.text

    strict = dataclasses.replace(config, bad_images="error")
    broken.write_bytes((photo_folder / "train" / "cat" / "0000.jpg").read_bytes())
    train_loader, _, _ = build_loaders(strict, CIFAR10)
    broken.write_text("overwritten after the up-front check")
    with pytest.raises(DataError, match="0001.jpg"):
        list(train_loader)

