"""Deployment: preprocessing inside the graph (raw pixels in, probabilities out), execution providers, float16."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from PIL import Image
from typer.testing import CliRunner

from conftest import tiny_run
from zoo.cli import app
from zoo.core.errors import UsageError
from zoo.data.images import open_rgb, preprocess_image
from zoo.export.embed import INPUT, OUTPUTS, check_embeddable, embed
from zoo.runtime.onnx_io import execution_providers, ort_session
from zoo.runtime.onnx_meta import ModelMetadata, read_props
from zoo.runtime.predictor import Predictor

runner = CliRunner()


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    with tiny_run(tmp_path_factory.mktemp("deploy")) as made:
        yield made


@pytest.fixture(scope="module")
def exported(run):
    """(plain model, model with its preprocessing inside), from the same run."""
    result, _, root = run
    plain, embedded = root / "plain.onnx", root / "embedded.onnx"
    for path, flags in ((plain, []), (embedded, ["--embed-preprocessing", "--top-k", "2"])):
        out = runner.invoke(app, ["export", str(result.run_dir), "-o", str(path), *flags])
        assert out.exit_code == 0, out.output
    return plain, embedded


def test_embedded_graph_takes_raw_pixels_and_agrees_with_zoos_preprocessing(run, exported):
    _, data, _ = run
    plain, embedded = exported
    session = ort_session(embedded)
    first = session.get_inputs()[0]
    assert first.name == INPUT and first.type == "tensor(uint8)" and first.shape[3] == 3
    assert [o.name for o in session.get_outputs()] == list(OUTPUTS)
    reference = Predictor(plain)
    files = sorted((data / "val").rglob("*.png"))
    # raw decoded pixels only: no zoo code between the file and the model
    for path in files:
        pixels = np.asarray(Image.open(path).convert("RGB"))[None]
        probs, top_p, top_i = session.run(None, {INPUT: pixels})
        assert probs.shape == (1, 2) and top_i.shape == (1, 2) and top_i.dtype == np.int64
        assert np.isclose(probs.sum(), 1.0, atol=1e-5) and np.allclose(np.sort(probs)[:, ::-1], top_p)
        want = reference.predict([path], top_k=2)[0]["top"]
        assert reference.info.labels[top_i[0, 0]] == want[0]["label"]
        assert abs(top_p[0, 0] - want[0]["probability"]) < 0.02
    report = json.loads(embedded.with_suffix(".json").read_text())
    check = report["embedded"]
    assert check["passed"] and check["images"] == len(files) and check["top1_agreement"] == 1.0
    meta = ModelMetadata.from_props(read_props(embedded), str(embedded))
    assert meta.labels == ("cats", "dogs") and meta.extra["raw_check"]["passed"]


def test_the_graph_computes_exactly_zoos_crop_and_normalisation(exported):
    """With no resize to make (the short side already at the resize size), the graph is exact: this pins the crop
    offsets, the channel order, the scaling and the normalisation."""
    plain, _ = exported
    info = ModelMetadata.from_props(read_props(plain), str(plain))
    pre = info.preprocess
    session = ort_session(plain)
    model = embed(onnx.load(str(plain)), pre, decode=pre.resize_size, top_k=2)
    graph = ort_session(model.SerializeToString())
    rng = np.random.default_rng(0)
    for h, w in ((pre.resize_size, pre.resize_size + 7), (pre.resize_size + 9, pre.resize_size)):
        img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        logits = session.run(None, {"input": preprocess_image(img, pre)[None]})[0]
        want = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
        got = graph.run([OUTPUTS[0]], {INPUT: np.asarray(img)[None]})[0]
        assert np.abs(got - want).max() < 1e-6


def test_predictor_and_cli_run_an_embedded_model_on_any_image_size(run, exported, tmp_path):
    _, data, _ = run
    plain, embedded = exported
    files = sorted((data / "val").rglob("*.png"))[:3]
    wide = tmp_path / "wide.png"
    Image.open(files[0]).convert("RGB").resize((90, 40)).save(wide)
    rows = Predictor(embedded).predict([*files, wide], top_k=1)
    plain_rows = Predictor(plain).predict([*files, wide], top_k=1)
    assert [r["top"][0]["label"] for r in rows] == [r["top"][0]["label"] for r in plain_rows]
    out = runner.invoke(app, ["predict", str(embedded), str(wide), "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.stdout)[0]["top"][0]["label"] in ("cats", "dogs")
    assert open_rgb(wide).size == (90, 40)


def test_embedding_refuses_what_it_cannot_do_in_one_line(run, tmp_path):
    result, _, _ = run
    out = runner.invoke(app, ["export", str(result.run_dir), "-o", str(tmp_path / "m.onnx"), "--embed-preprocessing",
                              "--opset", "17"])  # fmt: skip
    assert out.exit_code == 2 and "needs --opset 18" in out.output and not (tmp_path / "m.onnx").exists()
    out = runner.invoke(app, ["export", str(result.run_dir), "-o", str(tmp_path / "m.onnx"), "--embed-preprocessing",
                              "--int8"])  # fmt: skip
    assert out.exit_code == 2 and "in another export" in out.output
    from zoo.catalogue.backbone import Preprocess

    with pytest.raises(UsageError, match="grayscale"):
        check_embeddable(Preprocess(mean=(0.5,), std=(0.5,)), 18)
    with pytest.raises(UsageError, match="crop mode 'border'"):
        check_embeddable(Preprocess(crop_mode="border"), 18)


@pytest.mark.slow
def test_an_unavailable_provider_is_one_line_naming_the_installed_ones(run, exported, tmp_path):
    result, _, _ = run
    plain, _ = exported
    with pytest.raises(UsageError, match=r"--provider cuda: .*installed: .*cpu"):
        execution_providers("cuda")
    assert execution_providers("cpu") == ["CPUExecutionProvider"]
    with pytest.raises(UsageError, match="--provider no-such"):
        Predictor(plain, provider="no-such")
    out = runner.invoke(app, ["export", str(result.run_dir), "-o", str(tmp_path / "m.onnx"), "--provider", "tensorrt"])
    assert out.exit_code == 2 and "installed:" in out.output and not (tmp_path / "m.onnx").exists()
    ok = runner.invoke(app, ["export", str(result.run_dir), "-o", str(tmp_path / "m.onnx"), "--provider", "cpu",
                             "--json"])  # fmt: skip
    assert ok.exit_code == 0 and json.loads(ok.stdout)["provider"] == "cpu"
    assert Predictor(plain, provider="cpu").session.get_providers() == ["CPUExecutionProvider"]


@pytest.mark.slow
def test_fp16_export_is_checked_against_torch_with_a_float16_tolerance(run, tmp_path):
    result, _, _ = run
    out = runner.invoke(app, ["export", str(result.run_dir), "-o", str(tmp_path / "m.onnx"), "--fp16", "--json"])
    assert out.exit_code == 0, out.output
    fp16 = json.loads(out.stdout)["fp16"]
    assert fp16["passed"] and 0 < fp16["max_abs_diff"] <= fp16["atol"] and fp16["top1_agreement"] == 1.0
    path = tmp_path / "m.fp16.onnx"
    model = onnx.load(str(path))
    kinds = {i.data_type for i in model.graph.initializer}
    assert (
        onnx.TensorProto.FLOAT16 in kinds and model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    )
    assert ModelMetadata.from_props(read_props(path), str(path)).precision == "fp16"
    rows = Predictor(path).predict(sorted((run[1] / "val").rglob("*.png"))[:2], top_k=1)
    assert len(rows) == 2 and rows[0]["top"][0]["label"] in ("cats", "dogs")


@pytest.mark.slow
def test_export_writes_a_triton_repository_that_triton_schema_parses(run, tmp_path):
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    result, _, _ = run
    out = runner.invoke(app, ["export", str(result.run_dir), "-o", str(tmp_path / "ants.onnx"), "--embed-preprocessing",
                              "--triton-repo", str(tmp_path / "repo"), "--json"])  # fmt: skip
    assert out.exit_code == 0, out.output
    folder = tmp_path / "repo" / "ants"
    assert json.loads(out.stdout)["triton"] == str(folder)
    assert json.loads((tmp_path / "ants.json").read_text())["triton"] == str(folder)  # the report says it too
    config = text_format.Parse((folder / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    assert config.backend == "onnxruntime" and config.max_batch_size > 0
    assert [i.name for i in config.input] == [INPUT] and list(config.input[0].dims) == [-1, -1, 3]
    assert [o.name for o in config.output] == list(OUTPUTS)
    assert (folder / "labels.txt").read_text().split() == ["cats", "dogs"]
    assert (folder / "1" / "model.onnx").read_bytes() == (tmp_path / "ants.onnx").read_bytes()


@pytest.mark.parametrize("where", ["a-file", "missing/repo", "taken"])
def test_a_triton_repository_that_cannot_be_written_stops_the_export_before_it_starts(run, tmp_path, where,
                                                                                      monkeypatch):  # fmt: skip
    from zoo.export import exporter as export_module

    (tmp_path / "a-file").write_text("x")
    (tmp_path / "taken" / "ants").mkdir(parents=True)  # a model folder zoo did not write
    monkeypatch.setattr(export_module, "export_model", lambda *a, **k: pytest.fail("exported before the check"))
    result, _, _ = run
    out = runner.invoke(app, ["export", str(result.run_dir), "-o", str(tmp_path / "ants.onnx"),
                              "--triton-repo", str(tmp_path / where)])  # fmt: skip
    assert out.exit_code != 0 and "Triton repository" in out.stderr and "Traceback" not in out.output
    assert len(out.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "ants.onnx").exists() and not (tmp_path / "missing").exists()


def test_serve_refuses_a_model_with_its_preprocessing_inside_in_one_line(exported):
    from zoo.serve.app import create_app

    _, embedded = exported
    with pytest.raises(UsageError, match="--embed-preprocessing"):
        create_app(Predictor(embedded))


def test_zoo_serve_refuses_a_model_with_its_preprocessing_inside_before_running_it(exported):
    _, embedded = exported
    out = runner.invoke(app, ["serve", str(embedded), "--port", "0"])
    assert out.exit_code == 2 and "--embed-preprocessing" in out.output and "cannot run" not in out.output


def test_the_raw_pixel_check_compares_label_sets_for_a_multi_label_model(tmp_path):
    """Top-1 differs but the labels at the thresholds agree: a pass for multi-label, a miss for single-label."""
    import numpy as np
    from PIL import Image

    from zoo import Preprocess
    from zoo.export.embed import check_raw

    files = []
    for i in range(4):
        files.append(tmp_path / f"{i}.png")
        Image.new("RGB", (40, 30), (10 * i, 100, 200)).save(files[-1])
    graph = np.array([[0.51, 0.50, 0.10]], dtype=np.float32)  # what the embedded graph says
    python = np.array([[0.50, 0.51, 0.10]], dtype=np.float32)  # what zoo's preprocessing + the model say

    class Session:
        def run(self, names, feeds):
            assert feeds["images"].dtype == np.uint8 and feeds["images"].shape[-1] == 3
            return [graph]

    pre = Preprocess(input_size=(16, 16), crop_pct=1.0)
    single = check_raw(Session(), lambda x: python, files, pre, 16)
    assert single["agreement"] == "top-1" and single["top1_agreement"] == 0.0 and not single["passed"]
    multi = check_raw(Session(), lambda x: python, files, pre, 16, thresholds=[0.5, 0.5, 0.5])
    assert multi["agreement"] == "label-set" and multi["top1_agreement"] == 1.0 and multi["passed"]
    assert multi["median_prob_diff"] == pytest.approx(0.01)
    strict = check_raw(Session(), lambda x: python, files, pre, 16, thresholds=[0.5, 0.505, 0.5])
    assert strict["top1_agreement"] == 0.0 and not strict["passed"]  # 0.50 < 0.505 <= 0.51: the label sets differ
