"""Weights: download into the torch cache with hash checks, offline errors, local files, real offline weights."""

from __future__ import annotations

import dataclasses
import hashlib
import socket
from pathlib import Path

import pytest
import torch

from conftest import build_tiny, tiny_spec
from zoo import Weights
from zoo.catalogue.registry import get_registry
from zoo.catalogue.weights import cache_dir, fetch
from zoo.core.errors import UsageError, WeightsError
from zoo.model.build import choose_weights, create_model

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


def _tiny_checkpoint(path: Path) -> str:
    torch.manual_seed(1)
    torch.save(build_tiny(None).state_dict(), path)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_download_goes_to_torch_cache_and_is_verified(served):
    root, base = served
    digest = _tiny_checkpoint(root / "tiny-abc.pth")
    weights = Weights(tag="demo", url=f"{base}/tiny-abc.pth", sha256=digest)
    path = fetch(weights, progress=False)
    assert path == cache_dir() / "tiny-abc.pth"
    assert path.read_bytes() == (root / "tiny-abc.pth").read_bytes()
    (root / "tiny-abc.pth").unlink()  # cached: no second download
    assert fetch(weights, progress=False) == path
    model = create_model(tiny_spec(weights=(weights,), default_weights="demo"))
    assert torch.equal(model.state_dict()["fc.weight"], torch.load(path, weights_only=True)["fc.weight"])


def test_hash_mismatch_refuses_and_leaves_no_file(served):
    root, base = served
    _tiny_checkpoint(root / "tiny-bad.pth")
    weights = Weights(tag="demo", url=f"{base}/tiny-bad.pth", sha256="0" * 64)
    with pytest.raises(WeightsError, match="does not match the expected"):
        fetch(weights, progress=False)
    assert not (cache_dir() / "tiny-bad.pth").exists()


def test_a_wrong_file_source_is_not_told_to_delete_itself(tmp_path):
    """A file:// source is not zoo's download: deleting it would not fetch it again."""
    _tiny_checkpoint(tmp_path / "shipped.pth")
    weights = Weights(tag="shipped", url=(tmp_path / "shipped.pth").as_uri(), sha256="0" * 64)
    with pytest.raises(WeightsError, match="reinstall the package that ships it") as err:
        fetch(weights)
    assert "delete it" not in str(err.value)


def test_corrupt_cached_file_is_caught():
    cache_dir().mkdir(parents=True, exist_ok=True)
    (cache_dir() / "resnet18-f37072fd.pth").write_bytes(b"not the weights")
    with pytest.raises(WeightsError, match=r"resnet18-f37072fd.pth: sha256 .* does not match"):
        create_model("resnet18", num_classes=2)


def test_offline_names_url_cache_path_and_way_out():
    with socket.socket() as s:  # a port with nobody listening: the same error as no network
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/resnet18-f37072fd.pth"
    spec = get_registry().get("resnet18")
    spec = dataclasses.replace(spec, weights=(dataclasses.replace(spec.weights[0], url=url),))
    with pytest.raises(WeightsError) as err:
        create_model(spec, num_classes=2)
    message = str(err.value)
    assert url in message
    assert str(cache_dir() / "resnet18-f37072fd.pth") in message
    assert "--weights PATH" in message and "--weights none" in message


def test_torchvision_builder_reads_the_verified_cache_file(served):
    """The full torchvision path, offline: zoo downloads and checks, torchvision's builder loads."""
    root, base = served
    torch.manual_seed(3)
    state = create_model("resnet18", weights="none", check=False).state_dict()
    torch.save(state, root / "resnet18-f37072fd.pth")
    digest = hashlib.sha256((root / "resnet18-f37072fd.pth").read_bytes()).hexdigest()
    spec = get_registry().get("resnet18")
    local = dataclasses.replace(spec.weights[0], url=f"{base}/resnet18-f37072fd.pth", sha256=digest, hash_prefix=None)
    model = create_model(dataclasses.replace(spec, weights=(local,)), num_classes=4)
    assert torch.equal(model.layer3[0].conv1.weight, state["layer3.0.conv1.weight"])
    assert model.fc.out_features == 4


def test_weights_path_loads_with_weights_only_and_drops_other_classifier(tmp_path, caplog):
    torch.manual_seed(2)
    source = create_model("resnet18", num_classes=10, weights="none")
    torch.save({"model": {f"module.{k}": v for k, v in source.state_dict().items()}, "epoch": 3}, tmp_path / "ckpt.pt")
    with caplog.at_level("INFO"):
        model = create_model("resnet18", num_classes=2, weights=tmp_path / "ckpt.pt")
    assert torch.equal(model.layer1[0].conv1.weight, source.layer1[0].conv1.weight)
    assert model.fc.out_features == 2
    assert "classifier 'fc' has another number of classes" in caplog.text


@pytest.mark.slow
def test_weights_path_errors_are_one_line(tmp_path):
    import argparse

    torch.save({"x": argparse.Namespace(evil=True)}, tmp_path / "pickle.pt")
    with pytest.raises(WeightsError, match="weights_only=True"):
        create_model("resnet18", weights=tmp_path / "pickle.pt")
    torch.save(create_model("resnet34", weights="none").state_dict(), tmp_path / "r34.pt")
    with pytest.raises(WeightsError, match=r"does not fit resnet18: .*unexpected"):
        create_model("resnet18", weights=tmp_path / "r34.pt")
    with pytest.raises(WeightsError, match="no such file"):
        create_model("resnet18", weights=tmp_path / "missing.pt")
    with pytest.raises(UsageError, match="tags: IMAGENET1K_V1; or 'none'"):
        create_model("resnet18", weights="IMAGENET1K_V9")


def test_weights_none_and_default():
    spec = get_registry().get("resnet50")
    assert choose_weights(spec, "none").tag is None
    assert choose_weights(spec, None).tag.tag == "IMAGENET1K_V2"
    assert choose_weights(spec, "IMAGENET1K_V1").tag.tag == "IMAGENET1K_V1"


@pytest.mark.slow
def test_efficientnet_lite0_loads_real_imagenet_weights_offline():
    """The shipped weights classify real photos of ants and bees into ImageNet's ant and bee classes."""
    from PIL import Image
    from torchvision.transforms import v2

    spec = get_registry().get("efficientnet_lite0")
    model = create_model(spec).eval()
    pre = spec.preprocess
    transform = v2.Compose(
        [
            v2.PILToTensor(),
            v2.Resize(pre.resize_size),
            v2.CenterCrop(pre.input_size),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(pre.mean, pre.std),
        ]
    )
    categories = spec.get_weights("imagenet").categories
    hits = 0
    images = []
    for kind in ("ants", "bees"):
        files = sorted((SHARED / "data/hymenoptera/val" / kind).glob("*.jpg"))[:6]
        images += [(kind, f) for f in files]
    with torch.no_grad():
        batch = torch.stack([transform(Image.open(f).convert("RGB")) for _, f in images])
        top5 = model(batch).topk(5).indices
    for (kind, _), row in zip(images, top5, strict=True):
        labels = {categories[i] for i in row.tolist()}
        hits += ("ant" if kind == "ants" else "bee") in labels
    assert hits >= 10, f"only {hits}/12 photos had the right insect in the top 5"


def test_torch_home_decides_the_cache(served, tmp_path, monkeypatch):
    root, base = served
    digest = _tiny_checkpoint(root / "tiny-home.pth")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "elsewhere"))  # read when zoo downloads, as torch.hub does
    path = fetch(Weights(tag="demo", url=f"{base}/tiny-home.pth", sha256=digest), progress=False)
    assert path == tmp_path / "elsewhere" / "hub" / "checkpoints" / "tiny-home.pth" == cache_dir() / path.name


@pytest.mark.slow
def test_torchvision_weights_come_through_a_mirror_named_in_the_registry(served, monkeypatch):
    """A company mirror of download.pytorch.org in $ZOO_HOME/registry.toml's [mirrors]: zoo downloads (and checks)
    torchvision's file from it, torchvision's builder then reads it from the torch cache; pytorch.org is never
    asked (a lookup of any host but 127.0.0.1 fails the test)."""
    import socket

    from zoo.catalogue.registry import reset_registry, zoo_home

    real_lookup = socket.getaddrinfo

    def local_only(host, *args, **kwargs):
        assert host in ("127.0.0.1", "localhost"), f"the download tried {host}"
        return real_lookup(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", local_only)
    root, base = served
    torch.manual_seed(4)
    state = create_model("resnet18", weights="none", check=False).state_dict()
    (root / "torchvision").mkdir()
    torch.save(state, root / "torchvision" / "resnet18-f37072fd.pth")
    digest = hashlib.sha256((root / "torchvision" / "resnet18-f37072fd.pth").read_bytes()).hexdigest()
    zoo_home().mkdir(parents=True, exist_ok=True)
    (zoo_home() / "registry.toml").write_text(
        f'[mirrors]\n"https://download.pytorch.org/models/" = "{base}/torchvision/"\n'
    )
    reset_registry()
    try:
        spec = get_registry().get("resnet18")
        assert spec.weights[0].url == "https://download.pytorch.org/models/resnet18-f37072fd.pth"
        ours = dataclasses.replace(spec.weights[0], sha256=digest, hash_prefix=None)  # the mirror's copy is ours
        model = create_model(dataclasses.replace(spec, weights=(ours,)), num_classes=4)
    finally:
        reset_registry()
    assert torch.equal(model.layer2[0].conv1.weight, state["layer2.0.conv1.weight"])
    assert (cache_dir() / "resnet18-f37072fd.pth").is_file()
