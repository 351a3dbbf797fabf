"""The timm plugin's own tests, as any third-party plugin would write them: listing, the generated data
against the installed timm, check_backbone on a representative set, weights from the Hugging Face cache."""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import ClassVar

import pytest
from PIL import Image

import zoo_timm
from zoo.catalogue.registry import get_registry
from zoo.testing import check_backbone

# the smallest variant of each major family: CNNs, hybrids, ViT/DeiT/EVA, Swin, MaxViT, MobileNetV3/V4,
# EfficientNet/V2, RegNet, ConvNeXt, NFNet, ResNet-D, LeViT, FastViT, and the odd ones zoo handles specially
REPRESENTATIVE = (
    "resnet18", "resnet18d", "resnext26ts", "seresnext26t_32x4d", "regnetx_002", "regnety_002", "convnext_atto",
    "convnextv2_atto", "efficientnet_b0", "efficientnet_lite0", "efficientnetv2_rw_t", "tf_efficientnetv2_b0",
    "mobilenetv3_small_050", "mobilenetv4_conv_small", "mobilevit_xxs", "mobileone_s0", "fastvit_t8",
    "levit_128s", "vit_tiny_patch16_224", "deit_tiny_patch16_224", "deit_tiny_distilled_patch16_224",
    "eva02_tiny_patch14_224", "swin_tiny_patch4_window7_224", "maxvit_nano_rw_256", "coatnet_nano_rw_224",
    "nf_regnet_b0", "dla34", "dpn48b", "densenet121", "ghostnet_100", "hrnet_w18_small", "mixnet_s",
    "lcnet_050", "repvgg_a0", "rexnet_100", "tinynet_e", "edgenext_xx_small", "efficientformer_l1",
    "efficientvit_b0", "poolformer_s12", "pit_ti_224", "crossvit_tiny_240", "hiera_tiny_224", "mambaout_femto",
    "cait_xxs24_224", "xcit_nano_12_p16_224", "pvt_v2_b0", "inception_v3", "bat_resnext26ts", "resnetv2_50",
)  # fmt: skip


def test_every_architecture_is_registered_under_its_namespace():
    doc = json.loads(zoo_timm.DATA.read_text())
    described = [r["name"] for r in doc["models"] if not r.get("error")]
    registry = get_registry()
    timm_names = {s.name for s in registry.list(source="timm")}
    assert timm_names == {f"timm/{n}" for n in described} and len(timm_names) > 1300
    assert registry.get("resnet18").source == "torchvision"  # no collision: timm's is timm/resnet18
    assert registry.get("timm/resnet18").source == "timm"
    assert registry.suggest("resnet18d") == ["timm/resnet18d"]  # `zoo info resnet18d` -> did you mean timm/resnet18d?
    not_described = {r["name"]: r["error"] for r in doc["models"] if r.get("error")}
    assert all(name.endswith("_enc") for name in not_described), not_described  # encoder-only: no classifier
    assert len(not_described) == 7


def test_tags_preprocessing_and_heads_come_from_timm_data():
    registry = get_registry()
    r50 = registry.get("timm/resnet50")
    assert r50.default_weights == "a1_in1k" and len(r50.weights) >= 10
    tag = r50.get_weights("a1_in1k")
    assert tag.url == "hf-hub:timm/resnet50.a1_in1k" and tag.num_classes == 1000 and tag.categories[0] == "tench"
    assert r50.preprocess.interpolation == "bicubic" and r50.preprocess.resize_size == 235  # timm: floor(224/.95)
    deit = registry.get("timm/deit_tiny_distilled_patch16_224")
    assert deit.head == "head" and deit.aux_heads == ("head_dist",) and deit.features_layout == "NLC"
    assert registry.get("timm/resnetv2_50").head == "head.fc"  # a 1x1 conv classifier
    assert registry.get("timm/swin_tiny_patch4_window7_224").features_layout == "NHWC"
    squash = [s for s in registry.list(source="timm") if s.preprocess.crop_mode == "squash"]
    assert squash, "tags with timm's crop_mode squash keep it"
    groups = registry.get("timm/vit_tiny_patch16_224").group_names
    assert groups[0] == "stem" and groups[1] == "block1" and groups[-1] == "head"
    twins = registry.get("timm/twins_pcpvt_small")
    assert any("torch.fx cannot trace" in n for n in twins.notes)  # said in `zoo info`, and training falls back


def test_listing_imports_neither_torch_nor_timm():
    code = (
        "import sys; from zoo.cli import main; sys.argv = ['zoo', 'list', '--source', 'timm', '--json']\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "assert not {'torch', 'timm', 'torchvision'} & set(sys.modules), 'imported'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert len(json.loads(result.stdout)) > 1300


@pytest.mark.slow
def test_registry_data_matches_the_installed_timm_for_every_architecture():
    """Names, tags and preprocessing of every architecture, read again from timm (no model is built: seconds)."""
    import timm

    from zoo_timm.generate import registry_data

    doc = json.loads(zoo_timm.DATA.read_text())
    assert doc["timm"] == timm.__version__, "models.json comes from another timm: python -m zoo_timm.generate"
    assert [r["name"] for r in doc["models"]] == timm.list_models()
    for record in (r for r in doc["models"] if not r.get("error")):
        now = registry_data(record["name"])
        assert record.get("tags", {}) == now["tags"], record["name"]
        assert record.get("default_tag") == now["default_tag"], record["name"]


SAMPLE = ("resnet18d", "convnext_atto", "vit_tiny_patch16_224", "deit_tiny_distilled_patch16_224", "crossvit_tiny_240")


@pytest.mark.slow
def test_a_sample_regenerates_exactly():
    """Head, groups, layout and tracing of a sample, derived again from the built models (seconds each)."""
    from zoo_timm.generate import describe_all

    doc = json.loads(zoo_timm.DATA.read_text())
    committed = {r["name"]: r for r in doc["models"]}
    again, _ = describe_all(list(SAMPLE))
    for record in again["models"]:
        assert record == committed[record["name"]], record["name"]


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("ZOO_FULL_REGENERATION"), reason="about 10 minutes: ZOO_FULL_REGENERATION=1")
def test_every_architecture_regenerates_exactly(tmp_path):
    """The whole file, regenerated (the sample above runs in every CI; this one where there is time)."""
    from zoo_timm.generate import main

    main(["-o", str(tmp_path / "models.json")])
    fresh = json.loads((tmp_path / "models.json").read_text())
    committed = json.loads(zoo_timm.DATA.read_text())
    assert fresh["models"] == committed["models"]


@pytest.mark.slow
@pytest.mark.parametrize("arch", REPRESENTATIVE)
def test_check_backbone(arch):
    spec = get_registry().get(f"timm/{arch}")
    traceable = not spec.notes or not any("torch.fx" in n for n in spec.notes)
    size = max(64, spec.min_input_size)
    check_backbone(spec, input_size=size, cut=traceable, exporter="torchscript")


def _hf_cache(root: Path, repo: str, state: dict) -> Path:
    """The layout huggingface_hub writes: refs/main -> snapshots/<commit>/model.safetensors."""
    from safetensors.torch import save_file

    folder = root / f"models--{repo.replace('/', '--')}"
    commit = "0123456789abcdef0123456789abcdef01234567"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(commit)
    snapshot = folder / "snapshots" / commit
    snapshot.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(snapshot / "model.safetensors"))
    return snapshot / "model.safetensors"


@pytest.mark.slow
def test_weights_come_from_the_hugging_face_cache_offline(tmp_path, monkeypatch):
    import timm
    import torch

    from zoo.model.build import create_model

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    reference = timm.create_model("resnet18").state_dict()
    reference["conv1.weight"].fill_(0.25)
    _hf_cache(tmp_path / "hub", "timm/resnet18.a1_in1k", reference)
    model = create_model("timm/resnet18", num_classes=3, weights="a1_in1k")
    assert torch.equal(model.state_dict()["conv1.weight"], reference["conv1.weight"])
    assert model.fc.out_features == 3


@pytest.mark.slow
def test_offline_without_the_file_is_one_line_naming_the_way_out(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from zoo.cli import app

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    data = tmp_path / "data"
    for name, colour in (("a", (200, 40, 40)), ("b", (40, 40, 200))):
        (data / name).mkdir(parents=True)
        for i in range(4):  # each image its own shade: no duplicates across the split
            Image.new("RGB", (40, 40), (colour[0], colour[1] + 10 * i, colour[2])).save(data / name / f"{i}.png")
    result = CliRunner().invoke(app, ["finetune", "timm/resnet18", str(data), "--weights", "a2_in1k", "--out",
                                      str(tmp_path / "runs")])  # fmt: skip
    assert result.exit_code == 5
    line = result.stderr.strip()
    assert line.count("\n") == 0 and "Traceback" not in line
    assert "timm weights 'resnet18.a2_in1k'" in line and "hf-hub:timm/resnet18.a2_in1k" in line
    assert str(tmp_path / "hub" / "models--timm--resnet18.a2_in1k") in line
    assert "--weights PATH" in line and "--weights none" in line
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_a_local_safetensors_checkpoint_loads_safely(tmp_path):
    import timm
    import torch
    from safetensors.torch import save_file

    from zoo.model.build import create_model

    state = timm.create_model("resnet18", num_classes=7).state_dict()
    state["layer1.0.conv1.weight"].fill_(0.5)
    save_file(state, str(tmp_path / "mine.safetensors"))
    model = create_model("timm/resnet18", num_classes=2, weights=tmp_path / "mine.safetensors")
    assert torch.equal(model.state_dict()["layer1.0.conv1.weight"], state["layer1.0.conv1.weight"])
    assert model.fc.out_features == 2  # the 7-class head of the file was dropped, and said so


class LocalHub(http.server.BaseHTTPRequestHandler):
    """The part of the Hugging Face hub that huggingface_hub's hf_hub_download talks to (file_download.py): HEAD
    /REPO/resolve/REVISION/FILE answered with X-Repo-Commit, ETag and Content-Length (no X-Xet-Hash: a plain HTTP
    download follows), then GET of the same URL for the bytes. A missing file is a 404 with X-Error-Code."""

    files: ClassVar[dict[str, bytes]] = {}  # URL path -> bytes, set by the test
    requests: ClassVar[list[tuple[str, str]]] = []  # (method, path) of every request, in order

    def do_HEAD(self):
        self._answer(with_body=False)

    def do_GET(self):
        self._answer(with_body=True)

    def _answer(self, with_body: bool):
        path = self.path.split("?")[0]
        self.requests.append((self.command, path))
        data = self.files.get(path)
        if data is None:
            self.send_response(404)
            self.send_header("X-Error-Code", "EntryNotFound")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("X-Repo-Commit", "89abcdef0123456789abcdef0123456789abcdef")
        self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if with_body:
            self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.mark.slow
def test_weights_download_through_the_hub_mirror_hf_endpoint_names(tmp_path, monkeypatch):
    """HF_ENDPOINT names a hub mirror (https://hf-mirror.com in much of Asia, where huggingface.co is often out of
    reach): zoo asks it, not huggingface.co, whether the hub can be reached, and downloads the checkpoint through it
    into the Hugging Face cache, even when huggingface_hub was imported before HF_ENDPOINT was set."""
    import huggingface_hub.constants
    import timm
    import torch
    from safetensors.torch import save

    from zoo.model.build import create_model

    real_lookup = socket.getaddrinfo

    def local_only(host, *args, **kwargs):  # huggingface.co, or any other host, would fail the test
        assert host in ("127.0.0.1", "localhost"), f"the download tried {host}"
        return real_lookup(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", local_only)
    state = timm.create_model("test_convnext").state_dict()
    state["stem.0.weight"].fill_(0.25)
    checkpoint = "/timm/test_convnext.r160_in1k/resolve/main/model.safetensors"
    LocalHub.files = {checkpoint: save({k: v.contiguous() for k, v in state.items()})}
    LocalHub.requests = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), LocalHub)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.server_address[1]}")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # as if imported while offline
    try:
        model = create_model("timm/test_convnext", num_classes=3, weights="r160_in1k")
    finally:
        server.shutdown()
        server.server_close()
    assert torch.equal(model.state_dict()["stem.0.weight"], state["stem.0.weight"])
    assert ("HEAD", checkpoint) in LocalHub.requests and ("GET", checkpoint) in LocalHub.requests
    cached = list(
        (tmp_path / "hub" / "models--timm--test_convnext.r160_in1k" / "snapshots").glob("*/model.safetensors")
    )
    assert len(cached) == 1 and cached[0].read_bytes() == LocalHub.files[checkpoint]


@pytest.mark.slow
def test_an_unreachable_hub_mirror_is_named_in_the_one_line_error(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from zoo.cli import app

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    data = tmp_path / "data"
    for name, colour in (("a", (200, 40, 40)), ("b", (40, 40, 200))):
        (data / name).mkdir(parents=True)
        for i in range(4):  # each image its own shade: no duplicates across the split
            Image.new("RGB", (40, 40), (colour[0], colour[1] + 10 * i, colour[2])).save(data / name / f"{i}.png")
    result = CliRunner().invoke(app, ["finetune", "timm/test_convnext", str(data), "--weights", "r160_in1k", "--out",
                                      str(tmp_path / "runs")])  # fmt: skip
    assert result.exit_code == 5, result.output
    line = result.stderr.strip()
    assert line.count("\n") == 0 and f"(127.0.0.1:{port} cannot be reached)" in line, line
    assert "huggingface.co" not in line and "--weights none" in line
