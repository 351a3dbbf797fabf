"""A Triton Inference Server model repository from an exported zoo model: `zoo export RUN --triton-repo DIR`.

    DIR/NAME/config.pbtxt        onnxruntime backend, batching, inputs and outputs read from the graph
    DIR/NAME/labels.txt          one label per line, in class order (Triton's classification extension)
    DIR/NAME/1/model.onnx        the verified file, copied (and its external data file, if it has one)

The config is written as text by hand, so writing a repository needs neither Triton nor
tritonclient; the tests parse it with Triton's own `ModelConfig` protobuf schema. The folder
is built beside its place and renamed into it; a folder zoo did not write is never replaced
(zoo's folders carry `MARK` on the first line of their config.pbtxt).
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from zoo.core import atomic
from zoo.core.errors import Interrupted, ModelFileError, OutputError, UsageError
from zoo.core.interrupts import deferred_signals
from zoo.runtime.onnx_io import external_data_files
from zoo.runtime.onnx_meta import ModelMetadata, read_props

if TYPE_CHECKING:
    from zoo.export.options import ExportOptions
    from zoo.export.report import ExportReport

MARK = "# written by zoo"
LABELS_FILE = "labels.txt"
MODEL_FILE = "model.onnx"
KINDS = ("KIND_CPU", "KIND_GPU", "KIND_AUTO")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")

# ONNX TensorProto element types -> Triton's DataType names (model_config.proto)
_TYPES = {
    1: "TYPE_FP32",  # FLOAT
    2: "TYPE_UINT8",
    3: "TYPE_INT8",
    4: "TYPE_UINT16",
    5: "TYPE_INT16",
    6: "TYPE_INT32",
    7: "TYPE_INT64",
    8: "TYPE_STRING",
    9: "TYPE_BOOL",
    10: "TYPE_FP16",  # FLOAT16
    11: "TYPE_FP64",  # DOUBLE
    12: "TYPE_UINT32",
    13: "TYPE_UINT64",
    16: "TYPE_BF16",  # BFLOAT16
}


@dataclass(frozen=True)
class Tensor:
    """An input or output of the graph: its name, Triton data type, and full shape (-1 for a dynamic dim)."""

    name: str
    data_type: str
    shape: tuple[int, ...]


def graph_tensors(model: Path | str) -> tuple[list[Tensor], list[Tensor]]:
    """The graph's real inputs (initializers left out) and its outputs, as Triton sees them."""
    import onnx

    try:
        proto = onnx.load(str(model), load_external_data=False)
    except Exception as exc:
        raise ModelFileError(f"{model}: not a readable ONNX file ({type(exc).__name__}: {str(exc)[:160]})") from None
    initializers = {t.name for t in proto.graph.initializer}

    def tensor(value, what: str) -> Tensor:
        kind = value.type.WhichOneof("value")
        if kind != "tensor_type":
            raise ModelFileError(f"{model}: {what} '{value.name}' is a {kind}, not a tensor; Triton cannot serve it")
        t = value.type.tensor_type
        if t.elem_type not in _TYPES:
            name = onnx.TensorProto.DataType.Name(t.elem_type) if t.elem_type else "no"
            raise ModelFileError(f"{model}: {what} '{value.name}' has {name} elements, which Triton has no type for")
        if not t.HasField("shape"):
            raise ModelFileError(f"{model}: {what} '{value.name}' has no shape in the graph; export it again")
        shape = tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else -1 for d in t.shape.dim)
        return Tensor(value.name, _TYPES[t.elem_type], shape)

    inputs = [tensor(v, "input") for v in proto.graph.input if v.name not in initializers]
    outputs = [tensor(v, "output") for v in proto.graph.output]
    if not inputs or not outputs:
        raise ModelFileError(f"{model}: the graph has no {'inputs' if not inputs else 'outputs'}")
    return inputs, outputs


def batches(inputs: list[Tensor], outputs: list[Tensor]) -> bool:
    """Whether the graph takes any batch size: the first dim of every input and output is dynamic."""
    return all(t.shape and t.shape[0] == -1 for t in (*inputs, *outputs))


def render_config(
    name: str,
    info: ModelMetadata,
    inputs: list[Tensor],
    outputs: list[Tensor],
    *,
    source: str = MODEL_FILE,
    max_batch_size: int = 32,
    max_queue_delay_us: int = 1000,
    preferred_batch_sizes: tuple[int, ...] = (),
    instances: int = 1,
    kind: str = "KIND_CPU",
) -> str:
    """config.pbtxt (protobuf text format of Triton's ModelConfig). With `max_batch_size` 0, or a graph whose batch
    dim is fixed, Triton does not batch: dims are the full shapes. Otherwise dims leave the batch dim out, and
    requests are batched dynamically. The first output, one score per label, names the labels file."""
    batching = max_batch_size > 0 and batches(inputs, outputs)
    pre = info.preprocess
    version = f" {info.zoo_version}" if info.zoo_version else ""
    header = (
        f"{MARK}{version} from {source} ({info.backbone or 'model'}, {len(info.labels)} labels, {info.task}, "
        f"{info.precision}); zoo replaces this folder when it writes it again: edit a copy"
    )
    lines = [" ".join(header.splitlines())]  # a comment stays one line, whatever the file or backbone is called
    if inputs[0].data_type in ("TYPE_FP32", "TYPE_FP16"):
        lines.append(
            f"# the client preprocesses each image (zoo.data.images.load_for_eval does it): resize {pre.resize_size} "
            f"({pre.crop_mode}, {pre.interpolation}), centre crop {pre.input_size[0]}x{pre.input_size[1]}, /255, "
            f"mean {list(pre.mean)}, std {list(pre.std)}, {'grayscale' if len(pre.mean) == 1 else pre.channel_order}"
            ", NCHW"
        )
    else:
        lines.append("# the input is decoded pixels: the graph does the preprocessing")
    lines += [
        f"name: {_quote(name)}",
        'backend: "onnxruntime"',
        f"max_batch_size: {max_batch_size if batching else 0}",
    ]

    def block(t: Tensor, extra: list[str]) -> list[str]:
        shape = t.shape[1:] if batching else t.shape
        body = [f"name: {_quote(t.name)}", f"data_type: {t.data_type}"]
        if shape:
            body.append(f"dims: [ {', '.join(map(str, shape))} ]")
        else:  # one value per batch item (or a scalar): Triton wants dims [1] and a reshape to no dims
            body += ["dims: [ 1 ]", "reshape: { shape: [ ] }"]
        return ["  {", *(f"    {line}" for line in body + extra), "  }"]

    def section(key: str, blocks: list[list[str]]) -> list[str]:
        joined = []
        for i, b in enumerate(blocks):
            joined += [*b[:-1], b[-1] + ("," if i < len(blocks) - 1 else "")]
        return [f"{key} [", *joined, "]"]

    n = len(info.labels)
    lines += section("input", [block(t, []) for t in inputs])
    # zoo's first output holds one score per label (logits, or probabilities with the preprocessing embedded): it
    # names the labels file; other outputs (top-k values and indices, in rank order) do not
    scores = ("TYPE_FP32", "TYPE_FP16", "TYPE_FP64", "TYPE_BF16")
    first = outputs[0]
    labelled = [t is first and t.data_type in scores and t.shape[-1:] in ((n,), (-1,)) for t in outputs]
    label_line = [f"label_filename: {_quote(LABELS_FILE)}"]
    lines += section("output", [block(t, label_line if x else []) for t, x in zip(outputs, labelled, strict=True)])
    if batching:
        lines.append("dynamic_batching {")
        if preferred_batch_sizes:
            lines.append(f"  preferred_batch_size: [ {', '.join(map(str, preferred_batch_sizes))} ]")
        lines += [f"  max_queue_delay_microseconds: {max_queue_delay_us}", "}"]
    lines += ["instance_group [", "  {", f"    count: {instances}", f"    kind: {kind}", "  }", "]"]
    return "\n".join(lines) + "\n"


def _quote(text: str) -> str:
    """A protobuf text-format string literal."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")
    return '"' + escaped.replace("\t", "\\t") + '"'


def is_ours(folder: Path) -> bool:
    """A model folder zoo wrote: its config.pbtxt starts with zoo's mark."""
    try:
        with open(folder / "config.pbtxt", encoding="utf-8") as f:
            return f.readline().startswith(MARK)
    except (OSError, UnicodeDecodeError):
        return False


def model_name(model: Path) -> str:
    """The model's name in a repository when none is given: its file name without `.onnx`."""
    return model.name.removesuffix(".onnx")


def check_name(name: str) -> None:
    if not _NAME.fullmatch(name):
        raise UsageError(
            f"Triton model name {name!r}: use letters, digits, '_', '.' and '-' (up to 128, starting with a letter "
            "or digit)"
        )


def check_options(name: str, max_batch_size: int, max_queue_delay_us: int, instances: int, kind: str,
                  preferred_batch_sizes: tuple[int, ...]) -> str:  # fmt: skip
    """UsageError for a value Triton would refuse; returns the instance kind as Triton spells it."""
    check_name(name)
    if max_batch_size < 0:
        raise UsageError(f"max batch size {max_batch_size}: must be >= 0 (0: Triton does not batch)")
    if max_queue_delay_us < 0:
        raise UsageError(f"max queue delay {max_queue_delay_us} us: must be >= 0")
    if instances < 1:
        raise UsageError(f"instances {instances}: must be >= 1")
    for size in preferred_batch_sizes:
        if not 1 <= size <= max_batch_size:
            raise UsageError(f"preferred batch size {size}: must be 1 to the max batch size {max_batch_size}")
    full = kind.upper() if kind.upper().startswith("KIND_") else f"KIND_{kind.upper()}"
    if full not in KINDS:
        raise UsageError(f"instance kind {kind!r}: choose one of cpu, gpu, auto")
    return full


def check_repository(repo: Path | str, name: str) -> None:
    """OutputError when `repo/NAME` cannot be written (checked before an export, so a bad path costs nothing);
    writes nothing."""
    repo = Path(repo)
    check_name(name)
    target = repo / name
    if repo.exists() and not repo.is_dir():
        raise OutputError(f"Triton repository {repo}: is a file, not a folder")
    if not repo.exists():
        if not repo.parent.is_dir():
            raise OutputError(f"Triton repository {repo}: the folder {repo.parent} does not exist; create it")
        if not atomic.can_write_in(repo.parent):
            raise OutputError(f"Triton repository {repo}: cannot create it, {repo.parent} is not writable")
    elif not atomic.can_write_in(repo):
        raise OutputError(f"Triton repository {repo}: not a writable folder")
    if target.exists() and not (target.is_dir() and is_ours(target)):
        raise OutputError(
            f"Triton repository {repo}: {target} exists and zoo did not write it (no '{MARK}' line at the top of "
            "its config.pbtxt); choose another model name, or move it away"
        )


def write_repository(
    model: Path | str,
    repo: Path | str,
    name: str | None = None,
    *,
    max_batch_size: int = 32,
    max_queue_delay_us: int = 1000,
    preferred_batch_sizes: tuple[int, ...] = (),
    instances: int = 1,
    kind: str = "KIND_CPU",
) -> Path:
    """Write `repo/NAME/` for Triton's onnxruntime backend from an exported zoo model (already verified), and
    return that folder. NAME defaults to the model file's name without `.onnx`.

    The folder is built beside its place (`repo/.NAME.zoo-tmp-PID`) and renamed into it; a `repo/NAME` that zoo
    wrote is replaced, anything else there is an OutputError. `kind`: KIND_CPU, KIND_GPU or KIND_AUTO (or cpu,
    gpu, auto). A graph whose batch dim is fixed (`zoo export --batch 8`) gets max_batch_size 0 and full dims.
    """
    model, repo = Path(model), Path(repo)
    name = name if name is not None else model_name(model)
    kind = check_options(name, max_batch_size, max_queue_delay_us, instances, kind, tuple(preferred_batch_sizes))
    if not model.is_file():
        raise ModelFileError(f"{model}: no such model file")
    try:
        props = read_props(model)
    except Exception as exc:
        raise ModelFileError(f"{model}: not a readable ONNX file ({type(exc).__name__}: {str(exc)[:160]})") from None
    info = ModelMetadata.from_props(props, str(model))
    bad = next((label for label in info.labels if "\n" in label or "\r" in label), None)
    if bad is not None:
        raise ModelFileError(f"{model}: the label {bad!r} holds a line break; a Triton labels file cannot hold it")
    inputs, outputs = graph_tensors(model)
    data_files = external_data_files(model)
    for f in data_files:
        if not f.resolve().is_relative_to(model.parent.resolve()):
            raise ModelFileError(f"{model}: its external data {f} is outside the model's folder")
        if not f.is_file():
            raise ModelFileError(f"{model}: its external data file {f} is missing")

    check_repository(repo, name)
    target = repo / name
    if not repo.exists():
        try:
            repo.mkdir()
        except OSError as exc:
            raise OutputError(f"Triton repository {repo}: cannot create it ({exc.strerror or exc})") from None

    config = render_config(
        name, info, inputs, outputs, source=model.name, max_batch_size=max_batch_size,
        max_queue_delay_us=max_queue_delay_us, preferred_batch_sizes=tuple(preferred_batch_sizes),
        instances=instances, kind=kind,
    )  # fmt: skip
    work = repo / f".{name}.zoo-tmp-{os.getpid()}"
    old = repo / f".{name}.zoo-old-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    try:
        version = work / "1"
        version.mkdir(parents=True)
        for f in data_files:  # the model names its external data by a path relative to itself: keep it
            dst = version / f.resolve().relative_to(model.parent.resolve())
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f, dst)
        shutil.copyfile(model, version / MODEL_FILE)
        (work / LABELS_FILE).write_text("".join(f"{label}\n" for label in info.labels), encoding="utf-8")
        (work / "config.pbtxt").write_text(config, encoding="utf-8")
        with deferred_signals() as received:  # no Ctrl-C between taking the old folder away and putting the new in
            if target.exists():
                target.rename(old)
            work.rename(target)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if received:
        raise Interrupted(f"interrupted; the Triton model folder {target} was written whole", received[0])
    return target


REPORT_FILE = "model.json"  # without -o, the verification report beside the repository's model.onnx


def source_name(source: Path | str) -> str:
    """The model's name in a repository when `zoo export` has no -o: the run folder's name (for a run, or its
    best.pt/last.pt), a checkpoint file's name without its suffix, or the backbone's name."""
    path = Path(source).expanduser()
    if path.is_dir():
        return path.resolve().name
    if path.is_file():
        return path.resolve().parent.name if path.stem in ("best", "last") else path.stem
    return str(source).replace("/", "-").replace(":", "-")


def export_into_repository(source: Path | str, options: ExportOptions) -> ExportReport:
    """`zoo export SOURCE --triton-repo DIR` without -o: the export, with every check, to a staging folder, the
    verified model into DIR/NAME/1/model.onnx (NAME: `source_name`) and its report beside it (model.json); the
    staging folder is removed whatever happens. Returns the ExportReport, its paths those in the repository."""
    import dataclasses
    import tempfile

    from zoo.export.exporter import export
    from zoo.export.options import check_destination

    check_destination(None, options)
    beside = [f for f, on in (("--int8", options.int8), ("--fp16", options.fp16),
                              ("--keep-on-mismatch", options.keep_on_mismatch)) if on]  # fmt: skip
    if beside:
        raise UsageError(f"{beside[0]} writes a file beside -o/--output: give -o FILE.onnx with --triton-repo")
    repo = Path(options.triton_repo)
    name = source_name(source)
    check_repository(repo, name)  # before the export: a bad repository path costs nothing
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.zoo-export-", dir=repo if repo.is_dir() else repo.parent))
    try:
        report = export(source, staging / f"{name}.onnx", dataclasses.replace(options, mkdir=False))
        folder = Path(report.triton)
        report.path, report.report_path = str(folder / "1" / MODEL_FILE), str(folder / "1" / REPORT_FILE)
        atomic.write_json(Path(report.report_path), report.to_dict())
        return report
    finally:
        shutil.rmtree(staging, ignore_errors=True)
