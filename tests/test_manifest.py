"""Manifests: how columns, delimiters, labels and splits are read, and every bad row reported with its line."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from conftest import make_tagged
from zoo.core.errors import DataError, UsageError
from zoo.data import manifest
from zoo.data.manifest import ManifestOptions
from zoo.data.split import load


def _images(root, names, colour=(200, 40, 40)):
    (root / "img").mkdir(parents=True, exist_ok=True)
    for name in names:
        Image.fromarray(np.full((20, 20, 3), colour, np.uint8)).save(root / "img" / name)


def _write(root, text, name="labels.csv"):
    (root / name).write_text(text)
    return root / name


@pytest.mark.parametrize(
    "header, columns",
    [
        ("path,label", {"path": "path", "label": "label"}),
        ("Image Path;Class", {"path": "Image Path", "label": "Class"}),
        ("filename\tcategory\tSPLIT", {"path": "filename", "label": "category", "split": "SPLIT"}),
        ("image_id,tags,subset", {"path": "image_id", "label": "tags", "split": "subset"}),
    ],
)
def test_columns_are_found_by_name(tmp_path, header, columns):
    _images(tmp_path, ["a.png", "b.png"])
    sep = ";" if ";" in header else "\t" if "\t" in header else ","
    extra = [sep + "train"] * 2 if "split" in columns else ["", ""]
    text = "\n".join([header, f"img/a.png{sep}x{extra[0]}", f"img/b.png{sep}y{extra[1]}"]) + "\n"
    m = manifest.read(_write(tmp_path, text))
    assert m.columns == columns
    assert [(r.path.name, r.labels) for r in m.rows] == [("a.png", ("x",)), ("b.png", ("y",))]
    assert m.bad == [] and not m.multi_label


def test_tsv_by_extension_headerless_by_position_and_flags(tmp_path):
    _images(tmp_path, ["a.png", "b.png"])
    m = manifest.read(_write(tmp_path, "img/a.png\tcat\tval\nimg/b.png\tdog\ttrain\n", "list.tsv"))
    assert m.columns == {"path": "column 1", "label": "column 2", "split": "column 3"}
    assert [(r.labels, r.split) for r in m.rows] == [(("cat",), "val"), (("dog",), "train")]
    text = "who,file,what\nx,img/a.png,cat\ny,img/b.png,dog\n"
    m = manifest.read(_write(tmp_path, text), options=ManifestOptions(label_column="3"))
    assert m.columns == {"path": "file", "label": "what"}
    with pytest.raises(UsageError, match="--label-column kind: no such column; the header is: who, file, what"):
        manifest.read(_write(tmp_path, text), options=ManifestOptions(label_column="kind"))


def test_every_bad_row_is_skipped_with_its_line(tmp_path):
    _images(tmp_path, ["a.png", "b.png", "c.png", "d.png"])
    (tmp_path / "img" / "sub").mkdir()
    text = (
        "path,label,split\n"
        "img/a.png,cat,train\n"  # line 2
        "img/missing.png,cat,train\n"  # 3
        "img/b.png,,train\n"  # 4
        "img/c.png,dog,later\n"  # 5
        "img/d.png,dog,\n"  # 6
        "img/a.png,dog,train\n"  # 7: listed again
        "img/sub,dog,train\n"  # 8
        "/proc/self/environ,dog,train\n"  # 9
        '"img/d.png","a ""quoted""\nlabel",val\n'  # 10-11: a quoted cell over two lines
    )
    m = manifest.read(_write(tmp_path, text), options=ManifestOptions(multi_label=False))
    reasons = {line: why for line, _, why in m.bad}
    assert reasons == {
        3: "img/missing.png: no such file",
        4: "empty label",
        5: "unknown split 'later' (use train, val or test)",
        6: "empty split (use train, val or test)",
        7: "the same image as line 2",
        8: "img/sub: is a folder, not an image file",
        9: "/proc/self/environ: a system file, not an image",
    }
    assert m.total == 9
    assert [(r.line, r.labels) for r in m.rows] == [(2, ("cat",)), (11, ('a "quoted"\nlabel',))]


def test_ids_without_extension_and_paths_relative_to_a_folder(tmp_path):
    _images(tmp_path, ["0001.jpg", "0002.png"])
    csv = _write(tmp_path, "id,label\n0001,a\n0002,b\n")
    m = manifest.read(csv, root=tmp_path / "img")
    assert [r.path.name for r in m.rows] == ["0001.jpg", "0002.png"]


@pytest.mark.parametrize(
    "cells, options, multi, labels",
    [
        (["dog car", "cat"], ManifestOptions(), True, [("dog", "car"), ("cat",)]),
        (["dog|car", "cat"], ManifestOptions(), True, [("dog", "car"), ("cat",)]),
        (["dog; car", "cat"], ManifestOptions(), True, [("dog", "car"), ("cat",)]),
        (["golden retriever", "cat"], ManifestOptions(multi_label=False), False, [("golden retriever",), ("cat",)]),
        (["a:b", "c"], ManifestOptions(label_sep=":"), True, [("a", "b"), ("c",)]),
        (["dog", "cat"], ManifestOptions(multi_label=True), True, [("dog",), ("cat",)]),
        (["dog dog", "cat"], ManifestOptions(), True, [("dog",), ("cat",)]),
    ],
)
def test_label_separators(tmp_path, cells, options, multi, labels):
    _images(tmp_path, ["a.png", "b.png"])
    m = manifest.read(_write(tmp_path, f"path\tlabels\nimg/a.png\t{cells[0]}\nimg/b.png\t{cells[1]}\n", "l.tsv"),
                      options=options)  # fmt: skip
    assert m.multi_label is multi
    assert [r.labels for r in m.rows] == labels


def test_one_hot_columns_are_the_classes(tmp_path):
    _images(tmp_path, ["a.png", "b.png", "c.png"])
    single = manifest.read(_write(tmp_path, "image,MEL,NV,BKL\nimg/a.png,1,0,0\nimg/b.png,0.0,1.0,0.0\n"))
    assert not single.multi_label and single.classes == ["MEL", "NV", "BKL"]
    assert [r.labels for r in single.rows] == [("MEL",), ("NV",)]
    multi = manifest.read(_write(tmp_path, "image,sky,sea\nimg/a.png,1,1\nimg/b.png,0,1\nimg/c.png,0,0\n"))
    assert multi.multi_label and [r.labels for r in multi.rows] == [("sky", "sea"), ("sea",)]
    assert multi.bad == [(4, "img/c.png", "no class column is 1")]


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "the manifest is empty"),
        ("path,label\n", "only a header row"),
        ("who,what\nimg/a.png,x\n", "no path column in the header (who, what); name it with --path-column"),
        ("path,notes\nimg/a.png,hello\n", "no label column in the header (path, notes)"),
        ("path,label\nimg/none.png,a\nimg/none2.png,b\n", "none of its 2 row(s) can be used (first: line 2: "),
        ("path,label\nimg/a.png,a\nimg/b.png,a\n", "only one class (a)"),
        ("path,label,split\nimg/a.png,a,val\nimg/b.png,b,test\n", "no usable row has split 'train'"),
    ],
)
def test_manifests_that_cannot_be_trained_on_stop_with_one_line(tmp_path, text, message):
    _images(tmp_path, ["a.png", "b.png"])
    with pytest.raises(DataError) as err:
        load(_write(tmp_path, text))
    assert message in str(err.value) and "\n" not in str(err.value)


def test_not_utf8_and_not_a_manifest(tmp_path):
    (tmp_path / "l.csv").write_bytes(b"path,label\n\xff\xfe,x\n")
    with pytest.raises(DataError, match="not UTF-8 text"):
        load(tmp_path / "l.csv")
    (tmp_path / "model.bin").write_bytes(b"x")
    with pytest.raises(DataError, match="a file, not a folder or a manifest"):
        load(tmp_path / "model.bin")
    _images(tmp_path / "d", ["a.png"])
    with pytest.raises(UsageError, match="--label-column: only for a manifest"):
        load(tmp_path / "d", options=ManifestOptions(label_column="x"))


def test_bad_images_in_a_manifest_are_skipped_with_their_line(tmp_path, caplog):
    _images(tmp_path, [f"{i}.png" for i in range(6)])
    (tmp_path / "img" / "broken.png").write_bytes(b"not a png")
    (tmp_path / "img" / "notes.txt").write_text("hello")
    rows = [f"img/{i}.png,{'ab'[i % 2]}" for i in range(6)] + ["img/broken.png,a", "img/notes.txt,b"]
    split = load(_write(tmp_path, "path,label\n" + "\n".join(rows) + "\n"))
    reasons = sorted(why for _, why in split.skipped)
    assert reasons[0].startswith("line 8: UnidentifiedImageError")
    assert reasons[1] == "line 9: not an image file extension"
    assert len(split.train) + len(split.val) == 6 and split.layout == "manifest"
    assert split.manifest["bad_rows"] == 2 and split.manifest["rows"] == 8
    assert "skipped 2 of 8 row(s)" in caplog.text


def test_splits_labels_missing_from_train_and_the_val_fraction(tmp_path):
    _images(tmp_path, [f"{i}.png" for i in range(12)])
    rows = [f"img/{i}.png,{'ab'[i % 2]},{'train' if i < 8 else 'validation' if i < 10 else 'TEST'}" for i in range(11)]
    rows.append("img/11.png,c,val")  # a class no train row has
    split = load(_write(tmp_path, "path,label,split\n" + "\n".join(rows) + "\n"))
    assert (len(split.train), len(split.val), len(split.test)) == (8, 2, 1)
    assert split.classes == ["a", "b"]
    assert any("line 13: label 'c' has no train image" in why for _, why in split.skipped)
    no_split = load(_write(tmp_path, "path,label\n" + "\n".join(f"img/{i}.png,{'ab'[i % 2]}" for i in range(12))),
                    val_fraction=0.25)  # fmt: skip
    assert no_split.counts("val") == {"a": 2, "b": 2}  # stratified: round(6 * 0.25) of each class
    assert not no_split.test


def test_multi_label_manifest_and_its_split_keeps_every_label_in_train(tmp_path):
    csv = make_tagged(tmp_path, n=40)
    split = load(csv, val_fraction=0.25)
    assert split.multi_label and split.classes == ["blue", "green", "red"]
    assert all(isinstance(s.label, tuple) and s.label for s in split.train + split.val)
    train, val = split.counts("train"), split.counts("val")
    for label in split.classes:
        assert train[label] >= 1
        total = train[label] + val[label]
        assert abs(val[label] - 0.25 * total) <= 2, (label, val[label], total)
    assert 8 <= len(split.val) <= 12
    again = load(csv, val_fraction=0.25)
    assert [s.path for s in again.val] == [s.path for s in split.val]


def test_folder_with_a_labels_file(tmp_path):
    csv = make_tagged(tmp_path / "meta", n=12, name="tags.csv")
    images = tmp_path / "meta"  # paths in the manifest are relative to this folder
    moved = tmp_path / "elsewhere.csv"
    moved.write_text(csv.read_text())
    split = load(images, labels=moved)
    assert split.multi_label and len(split.train) + len(split.val) == 12
    with pytest.raises(DataError, match="with --labels, DATA is the folder"):
        load(tmp_path / "nope", labels=moved)


def test_a_few_cells_with_a_space_warn_and_name_the_flag(tmp_path, caplog):
    rows = ["path,label"] + [f"img{i}.png,{'golden retriever' if i == 3 else 'cat'}" for i in range(10)]
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    with caplog.at_level("WARNING"):
        m = manifest.read(tmp_path / "m.csv", tmp_path, ManifestOptions())
    assert m.multi_label and "1 of 10 label cells hold a space (line 5 first)" in caplog.text
    assert "--no-multi-label" in caplog.text
    caplog.clear()
    rows = ["path,label"] + [f"img{i}.png,cat dog" for i in range(10)]  # most cells: real multi-label data
    (tmp_path / "n.csv").write_text("\n".join(rows) + "\n")
    with caplog.at_level("WARNING"):
        assert manifest.read(tmp_path / "n.csv", tmp_path, ManifestOptions()).multi_label
    assert not caplog.text
