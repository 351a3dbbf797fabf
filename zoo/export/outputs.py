"""The files an export writes: their names beside NAME.onnx, which ones zoo wrote (it never overwrites another's),
the checks on -o before any work, and putting a model (with its external data) in place."""

from __future__ import annotations

import json
from pathlib import Path

from zoo.core import atomic
from zoo.core.errors import OutputError
from zoo.export.report import REPORT_MARK
from zoo.runtime.onnx_io import external_data_files
from zoo.runtime.onnx_meta import read_props


def is_ours(path: Path) -> bool:
    """A file zoo wrote for an export: a report with zoo's mark, or an ONNX file with zoo metadata (and its data)."""
    if path.name.endswith(".onnx.data"):
        return is_ours(path.with_name(path.name[: -len(".data")]))
    try:
        if path.suffix == ".json":
            return REPORT_MARK in json.loads(path.read_text(encoding="utf-8"))
        if path.suffix == ".onnx":
            return any(k.startswith("zoo.") for k in read_props(path))
    except Exception:
        return False
    return False


def sidecars(output: Path) -> dict[str, Path]:
    return {
        "data": output.with_name(f"{output.name}.data"),  # the weights of a model over 2 GB
        "failed_data": output.with_name(f"{output.stem}.FAILED.onnx.data"),
        "report": output.with_suffix(".json"),
        "failed": output.with_name(f"{output.stem}.FAILED.onnx"),
        "failed_report": output.with_name(f"{output.stem}.FAILED.json"),
        "int8": output.with_name(f"{output.stem}.int8.onnx"),
        "fp16": output.with_name(f"{output.stem}.fp16.onnx"),
    }


def check_output(output: Path, mkdir: bool = False) -> None:
    """Before any work: the path can be written, and no file zoo would write there belongs to someone else."""
    if output.suffix != ".onnx":
        raise OutputError(f"-o {output}: the file name must end in .onnx")
    if output.is_dir():
        raise OutputError(f"-o {output}: is a folder; name the .onnx file to write")
    parent = output.parent
    if parent.exists() and not parent.is_dir():
        raise OutputError(f"-o {output}: {parent} is a file, not a folder")
    if not parent.exists():
        if not mkdir:
            raise OutputError(f"-o {output}: the folder {parent} does not exist; create it, or add --mkdir")
        try:
            parent.mkdir(parents=True)
        except OSError as exc:
            raise OutputError(f"-o {output}: cannot create {parent} ({exc.strerror or exc})") from None
    if not parent.is_dir() or not atomic.can_write_in(parent):
        raise OutputError(f"-o {output}: {parent} is not a writable folder")
    for path in (output, *sidecars(output).values()):
        if path.exists() and not is_ours(path):
            raise OutputError(
                f"-o {output}: {path} exists and zoo did not write it (zoo writes {output.name} and its report "
                f"{output.with_suffix('.json').name} beside it); choose another name"
            )


def move_model(src: Path, dst: Path) -> None:
    """Put an ONNX file (and its external data, renamed to match) at `dst`; the model file arrives last."""
    data = external_data_files(src)
    if not data:
        src.replace(dst)
        return
    if data == [src.parent / f"{dst.name}.data"]:
        data[0].replace(dst.parent / data[0].name)
        src.replace(dst)
        return
    import onnx

    staged = src.parent / "renamed" / dst.name  # another name: the tensors' location changes with it
    staged.parent.mkdir()
    onnx.save_model(onnx.load(str(src)), str(staged), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=f"{dst.name}.data", size_threshold=1024)  # fmt: skip
    move_model(staged, dst)
