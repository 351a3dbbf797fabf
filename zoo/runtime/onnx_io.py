"""Writing a torch module as ONNX, and opening ONNX files in onnxruntime: the one place for both.

The opset policy: opsets 13 to 25 can be written, 18 by default. torch's dynamo
exporter writes opset 18 and later (asked for less, it silently writes 18), so
13-17 go through the TorchScript exporter; where the dynamo exporter fails, the
TorchScript one (opsets up to 23) is tried, and the result says which wrote it.
The opset reported is the one read back from the written file.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from zoo.core.errors import ExportError, ModelFileError, UsageError

log = logging.getLogger(__name__)

DEFAULT_OPSET = 18
EXTERNAL_DATA_BYTES = 1_800_000_000  # a protobuf file holds at most 2 GB: larger weights go to NAME.onnx.data
MIN_OPSET = 13
MAX_OPSET = 25
DYNAMO_MIN_OPSET = 18
TORCHSCRIPT_MAX_OPSET = 23
EXPORTERS = ("auto", "dynamo", "torchscript")


@dataclass
class Written:
    """What `write_onnx` wrote."""

    path: Path
    exporter: str  # "dynamo" or "torchscript"
    opset: int  # read back from the file
    notes: list[str] = field(default_factory=list)


def check_opset(opset: int) -> None:
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise UsageError(f"--opset {opset}: zoo writes opsets {MIN_OPSET} to {MAX_OPSET} (default {DEFAULT_OPSET})")


@contextlib.contextmanager
def quiet_stdout():
    """Send what libraries print to stdout (exporter and calibration chatter) to stderr: stdout stays for results."""
    with contextlib.redirect_stdout(sys.stderr), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def write_onnx(
    module,
    example: tuple,
    path: Path | str,
    *,
    opset: int = DEFAULT_OPSET,
    dynamic_batch: bool = True,
    input_names: tuple[str, ...] = ("input",),
    output_names: tuple[str, ...] = ("logits",),
    exporter: str = "auto",
    fallback: bool = True,
    external_data: bool = False,
) -> Written:
    """Export `module` on `example` inputs to `path`. `exporter="torchscript"` asks for the faster TorchScript
    exporter first (the frozen-prefix cache); "auto" is dynamo where the opset allows, TorchScript otherwise.
    With `fallback=False` only the first exporter of that order is tried. `external_data`: the weights go to
    `PATH.data` beside the file (what models over 2 GB need)."""
    import torch

    check_opset(opset)
    path = Path(path)
    axes = {name: {0: "batch"} for name in (*input_names, *output_names)} if dynamic_batch else None
    order = exporter_order(exporter, opset)[: None if fallback else 1]
    notes: list[str] = []
    failures = []
    for name in order:
        try:
            with quiet_stdout():
                if name == "dynamo":
                    program = torch.onnx.export(
                        module,
                        example,
                        dynamo=True,
                        input_names=list(input_names),
                        output_names=list(output_names),
                        dynamic_axes=axes,
                        opset_version=opset,
                        external_data=external_data,
                        verbose=False,
                    )
                    program.save(str(path), external_data=external_data)
                else:
                    torch.onnx.export(
                        module,
                        example,
                        str(path),
                        dynamo=False,
                        input_names=list(input_names),
                        output_names=list(output_names),
                        dynamic_axes=axes,
                        opset_version=opset,
                        external_data=external_data,
                    )
            if external_data:
                gather_external_data(path)
        except Exception as exc:  # the exporters differ in coverage: try the other one, and say so
            failures.append(
                f"{name}: {type(exc).__name__}: {str(exc).strip().splitlines()[0][:200] if str(exc) else ''}"
            )
            continue
        if failures:
            notes.append(f"{failures[0].split(':')[0]} exporter failed ({failures[0]}); used the {name} exporter")
        written = read_opset(path)
        if written != opset:
            raise ExportError(f"the {name} exporter wrote opset {written}, not the --opset {opset} asked for")
        return Written(path, name, written, notes)
    raise ExportError(f"torch.onnx.export failed with every exporter: {' | '.join(failures)}")


def exporter_order(exporter: str, opset: int) -> list[str]:
    """The exporters to try, in order: dynamo first for "auto", TorchScript first for "torchscript"; only those
    that can write `opset`."""
    if exporter not in EXPORTERS:
        raise UsageError(f"exporter {exporter!r}: choose one of {', '.join(EXPORTERS)}")
    order = ["dynamo", "torchscript"] if exporter in ("auto", "dynamo") else ["torchscript", "dynamo"]
    return [e for e in order if (e != "dynamo" or opset >= DYNAMO_MIN_OPSET) and
            (e != "torchscript" or opset <= TORCHSCRIPT_MAX_OPSET)]  # fmt: skip


def needs_external_data(module) -> bool:
    """Whether a module's weights are too large for one ONNX file."""
    size = sum(t.numel() * t.element_size() for t in (*module.parameters(), *module.buffers()))
    return size > EXTERNAL_DATA_BYTES


def gather_external_data(path: Path) -> None:
    """Put every external tensor of `path` into the one file `PATH.data` (exporters may write one per tensor)."""
    import onnx

    written = external_data_files(path)
    model = onnx.load(str(path), load_external_data=True)
    for f in written:
        f.unlink(missing_ok=True)
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=f"{path.name}.data", size_threshold=1024)  # fmt: skip


def external_data_files(path: Path) -> list[Path]:
    """The files beside an ONNX model that hold its external tensors."""
    import onnx
    from onnx.external_data_helper import ExternalDataInfo, uses_external_data

    model = onnx.load(str(path), load_external_data=False)
    names = {
        ExternalDataInfo(t).location for t in onnx.external_data_helper._get_all_tensors(model) if uses_external_data(t)
    }
    return [path.parent / n for n in sorted(names)]


def read_opset(path: Path | str) -> int:
    """The default-domain opset of an ONNX file."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


# --provider's short names; any full onnxruntime provider name is accepted too
PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
    "directml": "DmlExecutionProvider",
    "dnnl": "DnnlExecutionProvider",
    "rocm": "ROCMExecutionProvider",
    "migraphx": "MIGraphXExecutionProvider",
    "xnnpack": "XnnpackExecutionProvider",
    "qnn": "QNNExecutionProvider",
    "webgpu": "WebGpuExecutionProvider",
}
# the help of every --provider flag (zoo export, verify, predict, serve)
PROVIDER_HELP = (
    f"onnxruntime execution provider: {', '.join(list(PROVIDERS)[:5])}, ... (those installed) [default: cpu]."
)


def provider_names() -> list[str]:
    """The execution providers this onnxruntime has, by --provider's short names where there is one."""
    import onnxruntime as ort

    short = {v: k for k, v in PROVIDERS.items()}
    return [short.get(p, p) for p in ort.get_available_providers()]


def execution_providers(provider: str | None) -> list[str]:
    """onnxruntime's providers for --provider NAME: that one first, the CPU behind it (for the ops it lacks).

    UsageError naming the installed ones when this onnxruntime does not have it.
    """
    if provider is None or provider.lower() in ("cpu", "cpuexecutionprovider"):
        return ["CPUExecutionProvider"]
    import onnxruntime as ort

    full = PROVIDERS.get(provider.lower(), provider)
    if full not in ort.get_available_providers():
        raise UsageError(
            f"--provider {provider}: this onnxruntime ({ort.__version__}) does not have it; installed: "
            f"{', '.join(provider_names())} (GPU providers come with onnxruntime-gpu, OpenVINO with "
            "onnxruntime-openvino)"
        )
    return [full, "CPUExecutionProvider"]


def ort_session(
    source: Path | str | bytes, threads: int | None = None, providers: list[str] | None = None, provider=None
):
    """An onnxruntime session on the CPU (or `providers`, or --provider's `provider`), with all graph
    optimisations; ModelFileError if it cannot be loaded."""
    import onnxruntime as ort

    if provider is not None:
        providers = execution_providers(provider)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = threads
    what = "the model" if isinstance(source, bytes) else str(source)
    try:
        return ort.InferenceSession(
            source if isinstance(source, bytes) else str(source),
            options,
            providers=providers or ["CPUExecutionProvider"],
        )
    except Exception as exc:
        raise ModelFileError(
            f"{what}: onnxruntime cannot load it ({type(exc).__name__}: {str(exc).strip().splitlines()[0][:200]})"
        ) from None
