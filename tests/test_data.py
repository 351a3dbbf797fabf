"""Data folders: layouts, the split, every image mode, broken files, and the errors that stop a run early."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from conftest import make_images
from zoo.core.errors import DataError, UsageError
from zoo.data import images
from zoo.data.images import open_rgb
from zoo.data.split import scan


def test_train_val_layout(tmp_path):
    make_images(tmp_path, layout="train/val", per_class=6)
    split = scan(tmp_path)
    assert split.layout == "train/val"
    assert split.classes == ["cats", "dogs"]
    assert len(split.train) == 12 and len(split.val) == 6


def test_flat_layout_gets_a_seeded_stratified_split(tmp_path):
    make_images(tmp_path, classes=("a", "b", "c"), per_class=10)
    first = scan(tmp_path, val_fraction=0.3, seed=1)
    again = scan(tmp_path, val_fraction=0.3, seed=1)
    other = scan(tmp_path, val_fraction=0.3, seed=2)
    assert first.layout == "split"
    assert first.counts("val") == {"a": 3, "b": 3, "c": 3}
    assert first.counts("train") == {"a": 7, "b": 7, "c": 7}
    assert [s.path for s in first.val] == [s.path for s in again.val]
    assert [s.path for s in first.val] != [s.path for s in other.val]
    assert not {s.path for s in first.val} & {s.path for s in first.train}


def test_every_extension_case_insensitive(tmp_path):
    pixels = Image.fromarray(np.full((20, 20, 3), 128, np.uint8))
    for cls in ("x", "y"):
        folder = tmp_path / cls
        folder.mkdir()
        for i, (ext, fmt) in enumerate(
            [
                (".JPG", "JPEG"),
                (".jpeg", "JPEG"),
                (".Png", "PNG"),
                (".bmp", "BMP"),
                (".gif", "GIF"),
                (".webp", "WEBP"),
                (".TIFF", "TIFF"),
                (".tif", "TIFF"),
            ]
        ):
            pixels.save(folder / f"img{i}{ext}", format=fmt)
    split = scan(tmp_path, val_fraction=0.25)
    assert len(split.train) + len(split.val) == 16
    assert split.skipped == []


def test_modes_become_rgb_and_exif_orientation_is_applied(tmp_path):
    gray16 = Image.fromarray((np.arange(64 * 32, dtype=np.uint16).reshape(32, 64) * 30).astype(np.uint16))
    assert gray16.mode.startswith("I;16")
    gray16.save(tmp_path / "g16.png")
    rgb = open_rgb(tmp_path / "g16.png")
    assert rgb.mode == "RGB" and 0 < np.asarray(rgb).mean() < 255  # scaled, not clipped to white
    Image.new("RGBA", (10, 10), (255, 0, 0, 0)).save(tmp_path / "clear.png")
    assert open_rgb(tmp_path / "clear.png").getpixel((0, 0)) == (255, 255, 255)  # transparent -> white
    Image.new("CMYK", (10, 10), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg")
    assert open_rgb(tmp_path / "cmyk.jpg").mode == "RGB"
    Image.new("P", (10, 10)).save(tmp_path / "p.gif")
    Image.new("L", (10, 10), 80).save(tmp_path / "l.png")
    assert open_rgb(tmp_path / "l.png").getpixel((0, 0)) == (80, 80, 80)
    img = Image.new("RGB", (60, 20), (0, 128, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90 degrees
    img.save(tmp_path / "rot.jpg", exif=exif)
    assert open_rgb(tmp_path / "rot.jpg").size == (20, 60)


def test_jpeg_is_decoded_at_reduced_size(tmp_path):
    Image.new("RGB", (2000, 1000), (9, 9, 9)).save(tmp_path / "big.jpg")
    assert min(open_rgb(tmp_path / "big.jpg", min_short_side=200).size) >= 200
    assert open_rgb(tmp_path / "big.jpg", min_short_side=200).size[0] < 2000


def test_broken_files_are_skipped_and_listed(tmp_path, caplog, monkeypatch):
    make_images(tmp_path, per_class=6)
    ants = tmp_path / "cats"
    (ants / "empty.jpg").write_bytes(b"")
    (ants / "garbage.png").write_bytes(b"this is not an image at all")
    good = io.BytesIO()
    Image.new("RGB", (200, 200), (1, 2, 3)).save(good, format="JPEG")
    (ants / "truncated.jpg").write_bytes(good.getvalue()[: len(good.getvalue()) // 2])
    (ants / "notes.txt").write_text("hello")
    Image.new("RGB", (300, 300)).save(ants / "bomb.png")
    monkeypatch.setattr(images, "MAX_PIXELS", 50_000)
    split = scan(tmp_path)
    reasons = {p.name: why for p, why in split.skipped}
    assert set(reasons) == {"empty.jpg", "garbage.png", "truncated.jpg", "notes.txt", "bomb.png"}
    assert reasons["empty.jpg"] == "empty file"
    assert "decompression bomb" in reasons["bomb.png"]
    assert "not an image" in reasons["notes.txt"]
    assert len(split.train) + len(split.val) == 12
    assert "skipped 5 unusable file(s)" in caplog.text


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda root: None, "no class folders"),
        (lambda root: make_images(root, classes=("only",)), "only one class"),
        (lambda root: (make_images(root), (root / "empty_class").mkdir()), "class 'empty_class' has no usable image"),
        (
            lambda root: (make_images(root), (root / "bad").mkdir(), (root / "bad" / "x.jpg").write_bytes(b"xx")),
            r"class 'bad' has no usable image \(1 file\(s\) skipped",
        ),
        (
            lambda root: (make_images(root, layout="train/val"), make_images(root / "val", classes=("cows",))),
            "class\\(es\\) cows are not in",
        ),
    ],
)
def test_bad_folders_stop_before_training(tmp_path, setup, message):
    setup(tmp_path)
    with pytest.raises(DataError, match=message):
        scan(tmp_path)


def test_missing_folder_and_bad_fraction(tmp_path):
    with pytest.raises(DataError, match="no such folder"):
        scan(tmp_path / "nope")
    make_images(tmp_path)
    with pytest.raises(DataError, match="--val-fraction"):
        scan(tmp_path, val_fraction=1.5)


def test_transforms_follow_the_preprocessing():
    import torch

    from zoo import Preprocess
    from zoo.training.loaders import build_transform

    pre = Preprocess(input_size=(48, 48), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), crop_pct=0.75)
    img = Image.new("RGB", (100, 80), (255, 255, 255))
    out = build_transform(pre, "none")(img)
    assert out.shape == (3, 48, 48) and torch.allclose(out, torch.ones_like(out))
    for augment in ("light", "strong"):
        assert build_transform(pre, augment)(img).shape == (3, 48, 48)
    with pytest.raises(UsageError, match="--augment heavy"):
        build_transform(pre, "heavy")


def test_training_crops_are_smaller_only_where_every_group_trains():
    from zoo import Preprocess
    from zoo.training.loaders import build_transform, train_size

    pre = Preprocess(input_size=(224, 224))
    assert train_size(pre, 32, True, "light") == (160, 160)  # 0.72 x 224, to a multiple of 16
    assert train_size(Preprocess(input_size=(240, 320)), 32, True, "light") == (176, 224)
    assert train_size(pre, 32, False, "light") == (224, 224)  # a frozen prefix keeps the input size
    assert train_size(pre, 224, True, "light") == (224, 224)  # a model that takes one size only
    assert train_size(pre, 200, True, "light") == (200, 200)  # as small as it takes
    assert train_size(Preprocess(input_size=(96, 96)), 64, True, "light") == (64, 64)  # never below its minimum
    assert train_size(pre, 32, True, "none") == (224, 224)  # unaugmented: the evaluation crops
    assert train_size(pre, 32, False, "strong", asked=192) == (192, 192)
    with pytest.raises(UsageError, match="--train-size 100: zoo trains this model at its input size only"):
        train_size(pre, 224, True, "light", asked=100)
    with pytest.raises(UsageError, match="--train-size 256: zoo trains this model at its input size only"):
        train_size(pre, 224, True, "light", asked=256)
    assert train_size(pre, 224, True, "light", asked=224) == (224, 224)
    with pytest.raises(UsageError, match="--train-size 100: this model takes inputs of at least 128"):
        train_size(pre, 128, True, "light", asked=100)
    with pytest.raises(UsageError, match="--train-size 160: with --augment none"):
        train_size(pre, 32, True, "none", asked=160)
    img = Image.new("RGB", (300, 260))
    assert build_transform(pre, "light", (160, 160))(img).shape == (3, 160, 160)
    assert build_transform(pre, "none", (160, 160))(img).shape == (3, 224, 224)  # evaluation: the input size


def test_one_image_per_class_names_the_real_fix_not_the_val_fraction(tmp_path):
    """Each class's only image stays in train, so a larger --val-fraction cannot help: the message says so."""
    make_images(tmp_path / "folder", classes=("a", "b", "c"), per_class=1)
    with pytest.raises(DataError, match="every class has a single image") as err:
        scan(tmp_path / "folder", val_fraction=0.9)
    assert "--val-fraction" not in str(err.value)
    rows = [
        f"{p.relative_to(tmp_path / 'folder')},{p.parent.name}" for p in sorted((tmp_path / "folder").rglob("*.png"))
    ]
    (tmp_path / "folder" / "m.csv").write_text("path,label\n" + "\n".join(rows) + "\n")
    from zoo.data.split import load

    with pytest.raises(DataError, match="each has one, kept in train") as err:
        load(tmp_path / "folder" / "m.csv", val_fraction=0.9)
    assert "--val-fraction" not in str(err.value)
