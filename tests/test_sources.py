"""Where downloads come from: several URLs per file tried in order, the user's mirrors in front (ZOO_MIRROR, the
[mirrors] table, HF_ENDPOINT), HF_HUB_OFFLINE, and the sha256 as the one proof. Every server is on 127.0.0.1, and a
guard refuses any other host, so no test here can reach the internet."""

from __future__ import annotations

import hashlib
import shutil
import socket
import threading
from pathlib import Path

import pytest
from typer.testing import CliRunner

from zoo import Weights
from zoo.catalogue import sources
from zoo.catalogue.registry import reset_registry, zoo_home
from zoo.catalogue.sources import candidates
from zoo.catalogue.weights import cache_dir, fetch
from zoo.cli import app
from zoo.core.errors import DownloadError, WeightsError

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
MNIST = SHARED / "models" / "mnist-8.onnx"
MNIST_SHA256 = "ddd007b8b9b1e79c323e0b090266409dc73ba8e137c192a163148c908222ed11"
runner = CliRunner()


@pytest.fixture(autouse=True)
def _only_this_machine(monkeypatch):
    """Any name lookup but 127.0.0.1 fails the test: a download that tried a real host would be a bug here."""
    real = socket.getaddrinfo

    def local_only(host, *args, **kwargs):
        assert host in ("127.0.0.1", "localhost"), f"a test tried to reach {host}"
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", local_only)
    for name in ("ZOO_MIRROR", "HF_ENDPOINT", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    reset_registry()
    yield
    reset_registry()


def dead_url(name: str) -> str:
    """A URL on a port nothing listens on: the same failure as no network."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}/{name}"


def user_registry(text: str) -> None:
    zoo_home().mkdir(parents=True, exist_ok=True)
    (zoo_home() / "registry.toml").write_text(text)
    reset_registry()


def lfs_pointer(sha256: str, size: int) -> bytes:
    """What github.com/OWNER/REPO/raw/... serves for an LFS file once the LFS budget is spent: the pointer text."""
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


def mnist_entry(name: str, *urls: str) -> str:
    listed = ", ".join(f'"{u}"' for u in urls)
    return f'[onnx.{name}]\nurl = [{listed}]\nsha256 = "{MNIST_SHA256}"\nmean = [0.0]\nstd = [1.0]\ncrop_pct = 1.0\n'


def no_partial_files() -> bool:
    return not list(cache_dir().glob(".*.part")) if cache_dir().is_dir() else True


def test_a_wrong_file_at_the_first_url_is_skipped_with_a_line_naming_it_and_the_second_serves_it(served, caplog):
    root, base = served
    (root / "bad").mkdir()
    (root / "bad" / "mnist-8.onnx").write_bytes(MNIST.read_bytes()[:-100] + b"\0" * 100)  # another revision
    shutil.copy(MNIST, root / "mnist-8.onnx")
    weights = Weights(tag="mnist", url=f"{base}/bad/mnist-8.onnx", sha256=MNIST_SHA256)
    with caplog.at_level("WARNING", logger="zoo.catalogue.sources"):
        path = fetch(weights, progress=False, fallbacks=(f"{base}/mnist-8.onnx",))
    assert path.read_bytes() == MNIST.read_bytes() and no_partial_files()
    [line] = [r.getMessage() for r in caplog.records]
    assert line.startswith(f"{base}/bad/mnist-8.onnx: served other bytes: sha256 ") and "26463 bytes" in line
    assert "does not match the expected ddd007b8b9b1e79c" in line and line.endswith("trying the next source")


@pytest.mark.slow
def test_zoo_import_skips_a_wrong_file_at_the_first_url_and_imports_from_the_second(served):
    root, base = served
    (root / "mirror").mkdir()
    (root / "mirror" / "mnist-8.onnx").write_bytes(MNIST.read_bytes()[:-100] + b"\0" * 100)  # another revision
    (root / "origin").mkdir()
    shutil.copy(MNIST, root / "origin" / "mnist-8.onnx")
    user_registry(mnist_entry("served", f"{base}/mirror/mnist-8.onnx", f"{base}/origin/mnist-8.onnx"))
    result = runner.invoke(app, ["import", "served", "--json"])
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.stderr.splitlines() if line.startswith("WARNING")]
    assert len(warnings) == 1 and f"{base}/mirror/mnist-8.onnx: served other bytes" in warnings[0]
    assert "does not match the expected ddd007b8b9b1e79c" in warnings[0] and "trying the next source" in warnings[0]
    assert hashlib.sha256((cache_dir() / "mnist-8.onnx").read_bytes()).hexdigest() == MNIST_SHA256
    assert (zoo_home() / "onnx" / "served" / "layout.json").is_file() and no_partial_files()


def test_an_lfs_pointer_served_instead_of_the_model_is_named_as_such(served):
    root, base = served
    (root / "mnist-8.onnx").write_bytes(lfs_pointer(MNIST_SHA256, MNIST.stat().st_size))
    user_registry(mnist_entry("pointer", f"{base}/mnist-8.onnx"))
    result = runner.invoke(app, ["import", "pointer"])
    assert result.exit_code == 3, result.output  # the bytes are refused (input), not a network failure (5)
    line = result.stderr.strip().splitlines()[-1]
    assert "Traceback" not in result.output and line.startswith("error: [onnx.pointer]:")
    assert (
        "no source served the file" in line
        and f"{base}/mnist-8.onnx: served a Git LFS pointer of this very file" in line
    )
    assert "its LFS budget is spent" in line and f"copy the file to {cache_dir() / 'mnist-8.onnx'}" in line
    assert not (cache_dir() / "mnist-8.onnx").exists() and no_partial_files()


def test_every_source_failing_names_each_one_and_where_to_put_the_file(served):
    root, base = served
    (root / "page.onnx").write_text("<!DOCTYPE html><html><body>Not the model</body></html>")
    dead = dead_url("page.onnx")
    weights = Weights(tag="demo", url=f"{base}/page.onnx", sha256=MNIST_SHA256)
    with pytest.raises(WeightsError) as err:
        fetch(weights, progress=False, fallbacks=(dead, f"{base}/missing/page.onnx"))
    text = str(err.value)
    assert f"{base}/page.onnx: served an HTML page" in text and f"{dead}: " in text
    assert f"{base}/missing/page.onnx: HTTP 404" in text and str(cache_dir() / "page.onnx") in text
    with pytest.raises(DownloadError) as err:  # only network failures: an environment problem, exit 5
        fetch(Weights(tag="demo", url=dead, sha256=MNIST_SHA256), progress=False)
    assert err.value.exit_code == 5 and dead in str(err.value) and "--weights PATH" in str(err.value)


def test_zoo_mirror_folders_come_first_and_a_wrong_copy_there_is_skipped_too(served, tmp_path, monkeypatch):
    root, base = served
    shared_folder = tmp_path / "share"
    shared_folder.mkdir()
    shutil.copy(MNIST, shared_folder / "mnist-8.onnx")
    (root / "mnist-8.onnx").write_bytes(b"stale copy")
    monkeypatch.setenv("ZOO_MIRROR", f"{base}, {shared_folder}")  # an HTTP mirror, then a local folder
    origin = dead_url("models/mnist-8.onnx")
    assert candidates([origin], "mnist-8.onnx") == [f"{base}/mnist-8.onnx", shared_folder.as_uri() + "/mnist-8.onnx",
                                                    origin]  # fmt: skip
    path = fetch(Weights(tag="mnist", url=origin, sha256=MNIST_SHA256), progress=False)
    assert path == cache_dir() / "mnist-8.onnx" and path.read_bytes() == MNIST.read_bytes()


def test_the_mirrors_table_rewrites_prefixes_and_star_is_a_flat_folder(served, tmp_path):
    root, base = served
    (root / "tv").mkdir()
    shutil.copy(MNIST, root / "tv" / "mnist-8.onnx")
    origin = dead_url("models/mnist-8.onnx")
    prefix = origin.removesuffix("mnist-8.onnx")
    user_registry(f'[mirrors]\n"{prefix}" = ["{base}/nothing-here/", "{base}/tv/"]\n"*" = "{tmp_path}"\n')
    assert candidates([origin], "mnist-8.onnx") == [
        tmp_path.as_uri() + "/mnist-8.onnx",
        f"{base}/nothing-here/mnist-8.onnx",
        f"{base}/tv/mnist-8.onnx",
        origin,
    ]
    assert fetch(Weights(tag="mnist", url=origin, sha256=MNIST_SHA256), progress=False).read_bytes()[:4]


def test_a_malformed_mirrors_table_is_one_line_naming_it():
    user_registry('[mirrors]\n"https://download.pytorch.org/models/" = 3\n')
    result = runner.invoke(app, ["list"])
    assert result.exit_code == 3 and "Traceback" not in result.output
    assert 'registry.toml [mirrors] "https://download.pytorch.org/models/": give a URL prefix' in result.stderr


def test_hf_endpoint_fronts_hugging_face_urls_and_hf_hub_offline_skips_them(served, monkeypatch):
    root, base = served
    path = "onnxmodelzoo/legacy_models/resolve/main/validated/vision/classification/mnist/model/mnist-8.onnx"
    (root / path).parent.mkdir(parents=True)
    shutil.copy(MNIST, root / path)
    hub_url = f"https://huggingface.co/{path}"
    monkeypatch.setenv("HF_ENDPOINT", base + "/")
    assert candidates([hub_url], "mnist-8.onnx") == [f"{base}/{path}", hub_url]
    assert fetch(Weights(tag="mnist", url=hub_url, sha256=MNIST_SHA256), progress=False).is_file()

    (cache_dir() / "mnist-8.onnx").unlink()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the mirror is a hub too: skipped, and nothing is tried
    with pytest.raises(DownloadError, match="skipped, HF_HUB_OFFLINE is set") as err:
        fetch(Weights(tag="mnist", url=hub_url, sha256=MNIST_SHA256), progress=False)
    assert f"{base}/{path}: skipped" in str(err.value) and f"{hub_url}: skipped" in str(err.value)


@pytest.mark.slow
def test_a_mirror_that_never_answers_times_out_and_the_next_source_serves(served, monkeypatch):
    root, base = served
    shutil.copy(MNIST, root / "mnist-8.onnx")
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen()  # accepts connections (the kernel does) and never sends a byte
    accepted = []
    threading.Thread(target=lambda: accepted.append(silent.accept()), daemon=True).start()
    monkeypatch.setattr(sources, "TIMEOUT", 0.5)
    monkeypatch.setenv("ZOO_MIRROR", f"http://127.0.0.1:{silent.getsockname()[1]}/")
    try:
        assert fetch(Weights(tag="mnist", url=f"{base}/mnist-8.onnx", sha256=MNIST_SHA256), progress=False).is_file()
    finally:
        silent.close()
        for conn, _ in accepted:
            conn.close()
