"""The Triton model repository: config.pbtxt parsed with Triton's own ModelConfig schema (tritonclient), its
inputs and outputs checked against the ONNX graph, the copied model run in onnxruntime, the labels file, and the
folder replaced only when zoo wrote it."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from google.protobuf import text_format
from onnx import TensorProto, helper, numpy_helper

from conftest import tiny_run, tiny_spec
from zoo.catalogue.backbone import Preprocess
from zoo.core.errors import ModelFileError, OutputError, UsageError
from zoo.export.triton import write_repository
from zoo.runtime.onnx_io import ort_session
from zoo.runtime.onnx_meta import ModelMetadata, read_props, write_props

model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2")

LABELS = ["ants", "bees", 'say "cheese"']
ORT_TYPES = {"tensor(float)": "TYPE_FP32", "tensor(uint8)": "TYPE_UINT8", "tensor(int64)": "TYPE_INT64"}


def _export(path, batch: str = "dynamic"):
    import torch

    from zoo.export.exporter import export_model
    from zoo.model.build import create_model

    spec = tiny_spec()
    torch.manual_seed(0)
    report = export_model(create_model(spec, num_classes=3, weights="none"), spec, spec.preprocess, LABELS, path,
                          batch=batch, exporter="torchscript")  # fmt: skip
    assert report.passed
    return path


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("triton")
    return {"dynamic": _export(root / "tiny.onnx"), "fixed": _export(root / "tiny8.onnx", batch="8")}


def _embedded_like(path, k: int = 3):
    """A graph like `zoo export --embed-preprocessing`'s: uint8 NHWC pixels of any size in; probabilities [N, C],
    top-k probabilities [N, K] and top-k indices (int64) out; with zoo's metadata."""
    c = len(LABELS)
    w = numpy_helper.from_array(np.arange(3 * c, dtype=np.float32).reshape(3, c) / 100, "w")
    kk = numpy_helper.from_array(np.array([k], np.int64), "k")
    nodes = [
        helper.make_node("Cast", ["images"], ["x"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMean", ["x"], ["mean"], axes=[1, 2], keepdims=0),
        helper.make_node("MatMul", ["mean", "w"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=-1),
        helper.make_node("TopK", ["probabilities", "k"], ["top_k_probabilities", "top_k_indices"]),
    ]
    graph = helper.make_graph(
        nodes,
        "embedded",
        [helper.make_tensor_value_info("images", TensorProto.UINT8, ["batch", "height", "width", 3])],
        [
            helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", c]),
            helper.make_tensor_value_info("top_k_probabilities", TensorProto.FLOAT, ["batch", k]),
            helper.make_tensor_value_info("top_k_indices", TensorProto.INT64, ["batch", k]),
        ],
        initializer=[w, kk],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    meta = ModelMetadata(tuple(LABELS), Preprocess(input_size=(32, 32), crop_pct=1.0), 32, backbone="hand")
    write_props(path, meta.to_props())
    return path


def _parse(folder):
    """config.pbtxt through Triton's schema: an unknown field or a misspelt enum value is a ParseError."""
    return text_format.Parse((folder / "config.pbtxt").read_text(encoding="utf-8"), model_config_pb2.ModelConfig())


def _dtype(config_type: int) -> str:
    return model_config_pb2.DataType.Name(config_type)


def _check_io_against_graph(config, model_file, batching: bool):
    """Names, types and dims of the config, read back from the copied model by onnxruntime (another reader)."""
    session = ort_session(model_file)
    for declared, actual in ((config.input, session.get_inputs()), (config.output, session.get_outputs())):
        assert [d.name for d in declared] == [a.name for a in actual]
        for d, a in zip(declared, actual, strict=True):
            assert _dtype(d.data_type) == ORT_TYPES[a.type]
            shape = [s if isinstance(s, int) else -1 for s in a.shape]
            assert list(d.dims) == (shape[1:] if batching else shape)
    return session


def test_config_parses_with_tritons_schema_and_matches_the_graph(exported, tmp_path):
    folder = write_repository(exported["dynamic"], tmp_path / "repo")
    assert folder == tmp_path / "repo" / "tiny"
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")) == [
        "1", "1/model.onnx", "config.pbtxt", "labels.txt"
    ]  # fmt: skip
    config = _parse(folder)
    assert config.name == "tiny" and config.backend == "onnxruntime" and config.max_batch_size == 32
    assert config.dynamic_batching.max_queue_delay_microseconds == 1000
    assert [(g.count, model_config_pb2.ModelInstanceGroup.Kind.Name(g.kind)) for g in config.instance_group] == [
        (1, "KIND_CPU")
    ]
    session = _check_io_against_graph(config, folder / "1" / "model.onnx", batching=True)
    assert list(config.input[0].dims) == [3, 32, 32] and list(config.output[0].dims) == [3]
    assert config.output[0].label_filename == "labels.txt"
    assert (folder / "labels.txt").read_text(encoding="utf-8").splitlines() == LABELS
    assert (folder / "1" / "model.onnx").read_bytes() == exported["dynamic"].read_bytes()
    x = np.random.default_rng(0).normal(size=(5, 3, 32, 32)).astype(np.float32)  # any batch up to the max
    got = session.run(None, {"input": x})[0]
    np.testing.assert_array_equal(got, ort_session(exported["dynamic"]).run(None, {"input": x})[0])
    assert not [p for p in (tmp_path / "repo").iterdir() if p.name != "tiny"]  # no temp folder left


def test_fixed_batch_model_gets_max_batch_size_0_and_full_dims(exported, tmp_path):
    folder = write_repository(exported["fixed"], tmp_path / "repo", "fixed", kind="gpu", instances=2)
    config = _parse(folder)
    assert config.max_batch_size == 0 and not config.HasField("dynamic_batching")
    _check_io_against_graph(config, folder / "1" / "model.onnx", batching=False)
    assert list(config.input[0].dims) == [8, 3, 32, 32] and list(config.output[0].dims) == [8, 3]
    assert [(g.count, model_config_pb2.ModelInstanceGroup.Kind.Name(g.kind)) for g in config.instance_group] == [
        (2, "KIND_GPU")
    ]


def test_embedded_preprocessing_graph_uint8_input_and_three_outputs(tmp_path):
    model = _embedded_like(tmp_path / "raw.onnx", k=len(LABELS))  # K == C: only the per-class output is labelled
    folder = write_repository(model, tmp_path / "repo", "raw", max_batch_size=8, preferred_batch_sizes=(4, 8))
    config = _parse(folder)
    assert config.max_batch_size == 8 and list(config.dynamic_batching.preferred_batch_size) == [4, 8]
    session = _check_io_against_graph(config, folder / "1" / "model.onnx", batching=True)
    assert [(i.name, _dtype(i.data_type), list(i.dims)) for i in config.input] == [("images", "TYPE_UINT8",
                                                                                   [-1, -1, 3])]  # fmt: skip
    assert [(o.name, _dtype(o.data_type), list(o.dims), o.label_filename) for o in config.output] == [
        ("probabilities", "TYPE_FP32", [3], "labels.txt"),
        ("top_k_probabilities", "TYPE_FP32", [3], ""),
        ("top_k_indices", "TYPE_INT64", [3], ""),
    ]
    for h, w in ((20, 30), (41, 17)):  # dynamic height and width
        pixels = np.random.default_rng(h).integers(0, 256, (2, h, w, 3), dtype=np.uint8)
        probs, _, top = session.run(None, {"images": pixels})
        assert probs.shape == (2, 3) and top.dtype == np.int64


def test_names_with_quotes_are_escaped(tmp_path):
    model = _embedded_like(tmp_path / "raw.onnx")
    proto = onnx.load(str(model))
    renamed = 'top "k"\\indices'
    for node in proto.graph.node:
        node.output[:] = [renamed if o == "top_k_indices" else o for o in node.output]
    proto.graph.output[2].name = renamed
    onnx.save(proto, str(model))
    config = _parse(write_repository(model, tmp_path / "repo"))
    assert config.output[2].name == renamed and config.name == "raw"


def test_a_folder_zoo_did_not_write_is_refused_and_its_own_is_replaced(exported, tmp_path):
    repo = tmp_path / "repo"
    (repo / "tiny" / "1").mkdir(parents=True)
    mine = 'name: "tiny"\nbackend: "onnxruntime"\n'
    (repo / "tiny" / "config.pbtxt").write_text(mine)
    with pytest.raises(OutputError, match="exists and zoo did not write it"):
        write_repository(exported["dynamic"], repo)
    assert (repo / "tiny" / "config.pbtxt").read_text() == mine and sorted(p.name for p in repo.iterdir()) == ["tiny"]
    folder = write_repository(exported["dynamic"], repo, "ours", max_batch_size=4)
    (folder / "stale.txt").write_text("from an earlier write")
    again = write_repository(exported["dynamic"], repo, "ours", max_batch_size=16)
    assert _parse(again).max_batch_size == 16 and not (again / "stale.txt").exists()
    assert sorted(p.name for p in repo.iterdir()) == ["ours", "tiny"]  # no temp or old folder left
    (repo / "afile").write_text("x")
    with pytest.raises(OutputError, match="zoo did not write it"):
        write_repository(exported["dynamic"], repo, "afile")


def test_external_data_is_copied_beside_the_model(exported, tmp_path):
    big = tmp_path / "big.onnx"
    proto = onnx.load(str(exported["dynamic"]))
    onnx.save_model(proto, str(big), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="big.onnx.data", size_threshold=0)  # fmt: skip
    folder = write_repository(big, tmp_path / "repo")
    assert (folder / "1" / "big.onnx.data").read_bytes() == (tmp_path / "big.onnx.data").read_bytes()
    x = np.zeros((2, 3, 32, 32), np.float32)
    np.testing.assert_array_equal(
        ort_session(folder / "1" / "model.onnx").run(None, {"input": x})[0],
        ort_session(exported["dynamic"]).run(None, {"input": x})[0],
    )


@pytest.mark.parametrize(
    "change, error, message",
    [
        ({"name": "../up"}, UsageError, "Triton model name '../up'"),
        ({"kind": "tpu"}, UsageError, "instance kind 'tpu'"),
        ({"max_batch_size": -1}, UsageError, "max batch size -1"),
        ({"instances": 0}, UsageError, "instances 0"),
        ({"preferred_batch_sizes": (64,)}, UsageError, "preferred batch size 64"),
    ],
)
def test_bad_options_are_refused_before_writing(exported, tmp_path, change, error, message):
    with pytest.raises(error, match=message.replace("(", r"\(")):
        write_repository(exported["dynamic"], tmp_path / "repo", **change)
    assert not (tmp_path / "repo").exists()


def test_a_model_without_zoo_metadata_is_refused(exported, tmp_path):
    plain = onnx.load(str(exported["dynamic"]))
    del plain.metadata_props[:]
    onnx.save(plain, str(tmp_path / "plain.onnx"))
    with pytest.raises(ModelFileError, match="no zoo metadata"):
        write_repository(tmp_path / "plain.onnx", tmp_path / "repo")
    assert not (tmp_path / "repo").exists()


def test_the_config_says_where_it_came_from(exported, tmp_path):
    text = (write_repository(exported["dynamic"], tmp_path / "repo") / "config.pbtxt").read_text()
    first = text.splitlines()[0]
    assert first.startswith("# written by zoo") and "tiny.onnx" in first and "3 labels" in first
    assert "mean [0.485, 0.456, 0.406]" in text  # what a client must do to a float input


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    with tiny_run(tmp_path_factory.mktemp("triton-run"), epochs=1) as made:
        yield made


@pytest.mark.slow
def test_export_with_triton_repo_and_no_output_puts_the_verified_model_in_the_repository(run, tmp_path):
    from typer.testing import CliRunner

    from zoo.cli import app

    result, _, _ = run
    repo = tmp_path / "repo"
    out = CliRunner().invoke(app, ["export", str(result.run_dir), "--triton-repo", str(repo), "--json"])
    assert out.exit_code == 0, out.output
    folder = repo / result.run_dir.name  # the model is named after the run
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))
    assert files == ["1", "1/model.json", "1/model.onnx", "config.pbtxt", "labels.txt"]
    assert [p.name for p in repo.iterdir()] == [folder.name] and [p.name for p in tmp_path.iterdir()] == ["repo"]
    model = folder / "1" / "model.onnx"
    report = json.loads((folder / "1" / "model.json").read_text())  # the verification report, beside the model
    assert report["passed"] and report["path"] == str(model) and report["triton"] == str(folder)
    assert report["checks"] and not any(c["failures"] for c in report["checks"]) and json.loads(out.stdout) == report
    assert ModelMetadata.from_props(read_props(model), str(model)).extra["check"]["passed"]
    config = _parse(folder)
    assert config.name == folder.name and config.backend == "onnxruntime"
    _check_io_against_graph(config, model, batching=True)


def test_export_without_output_or_triton_repo_is_a_usage_error(tmp_path):
    from typer.testing import CliRunner

    from zoo.cli import app
    from zoo.export.exporter import export

    out = CliRunner().invoke(app, ["export", str(tmp_path)])
    assert out.exit_code == 2 and "-o/--output" in out.stderr and "--triton-repo" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
    with pytest.raises(UsageError, match="--triton-repo"):
        export(tmp_path)
    with pytest.raises(UsageError, match="--int8"):  # it writes beside -o: nowhere to go without it
        export(tmp_path, triton_repo=str(tmp_path / "repo"), int8=True)
    assert list(tmp_path.iterdir()) == []
