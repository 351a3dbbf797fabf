"""`zoo rank`: candidates, features and their cache, the ranking, its files, the CLI and `zoo finetune auto`."""

from __future__ import annotations

import dataclasses
import hashlib
import json

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import build_tiny, make_images, make_tagged, plugin_module, tiny_spec
from zoo.catalogue.backbone import Weights
from zoo.cli import app
from zoo.core.errors import UsageError
from zoo.select import features as feature_mod
from zoo.select.estimators import ESTIMATES
from zoo.select.names import ESTIMATE_NAMES
from zoo.select.rank import NO_WEIGHTS, Row, rank, rank_candidates, select_candidates

runner = CliRunner()
CATEGORIES = tuple(f"src{i}" for i in range(10))


def _pretrained(tmp_path, name: str, seed: int, **changes):
    """A tiny backbone with 'pretrained' weights in a file (seeded), its source head of 10 categories."""
    import torch

    torch.manual_seed(seed)
    path = tmp_path / f"{name}.pt"
    torch.save(build_tiny(None).state_dict(), path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    weights = Weights(tag="pre", url=path.as_uri(), sha256=digest, categories=CATEGORIES)
    return tiny_spec(name, weights=(weights,), default_weights="pre", **changes)


def _broken_build(spec, weights=None, **kwargs):
    raise RuntimeError("this model cannot be built")


@pytest.fixture
def ranked_registry(use_registry, tmp_path):
    specs = [
        _pretrained(tmp_path, "tiny_a", 1),
        _pretrained(tmp_path, "tiny_b", 2, num_params=9_000),
        tiny_spec("tiny_none"),  # no pretrained weights
        dataclasses.replace(_pretrained(tmp_path, "tiny_broken", 3), build=_broken_build),
    ]
    return use_registry(("rankplugin", plugin_module("rankplugin", *specs)))


@pytest.fixture
def data(tmp_path):
    return make_images(tmp_path / "data", classes=("red", "blue", "green"), per_class=10, size=36)


def test_names_match_the_estimators():
    assert ESTIMATE_NAMES == (*ESTIMATES, "probe")


def test_candidates_by_name_glob_cut_source_and_at_hand(ranked_registry):
    pick = select_candidates
    assert [c.label for c in pick(["tiny_b", "tiny_a@cut:stage1"], None, None, None, ranked_registry)] == [
        "tiny_a@cut:stage1",
        "tiny_b",
    ]
    assert {c.label for c in pick(["tiny_?"], None, None, None, ranked_registry)} == {"tiny_a", "tiny_b"}
    by_source = {c.label for c in pick([], "rankplugin", None, 8_000, ranked_registry)}
    assert by_source == {"tiny_a", "tiny_none", "tiny_broken"}  # tiny_b has 9,000 parameters
    # the default set: weights at hand (these file:// ones are), never a backbone without pretrained weights
    default = {c.label for c in pick([], None, None, None, ranked_registry)}
    assert {"tiny_a", "tiny_b", "tiny_broken"} <= default and "tiny_none" not in default
    for bad, message in (
        (["nosuch*"], "matches no backbone"),
        (["tiny_a@stage1"], "NAME@cut:GROUP"),
        (["tiny_c"], "unknown backbone"),
    ):
        with pytest.raises(UsageError, match=message):
            pick(bad, None, None, None, ranked_registry)
    with pytest.raises(UsageError, match="--tag nosuch"):
        pick([], None, "nosuch", None, ranked_registry)


def test_rank_scores_every_estimate_and_reports_failures_as_rows(ranked_registry, data):
    ranking = rank(data, ["tiny_a", "tiny_b", "tiny_a@cut:stage1", "tiny_none", "tiny_broken"], advise=False)
    rows = {r.candidate: r for r in ranking.rows}
    assert ranking.images == 24  # 3 classes of 10, 8 train images each
    whole = rows["tiny_a"]
    assert whole.error is None and set(whole.scores) == set(ESTIMATE_NAMES)
    assert whole.ms_per_image > 0 and whole.engine in ("onnxruntime", "torch") and whole.input_size == 32
    cut = rows["tiny_a@cut:stage1"]
    assert {"leep", "nce"} & set(cut.scores) == set() and "pretrained classifier" in cut.missing["leep"]
    assert rows["tiny_none"].error == NO_WEIGHTS
    assert "cannot be built" in rows["tiny_broken"].error
    # ranked rows first, by logme, each with its rank under every estimate; failures after them
    ranked = [r for r in ranking.rows if r.error is None]
    assert ranking.rows[: len(ranked)] == ranked and ranking.winner is ranked[0]
    assert [r.scores["logme"] for r in ranked] == sorted((r.scores["logme"] for r in ranked), reverse=True)
    assert all(r.ranks["logme"] == i for i, r in enumerate(ranked, 1))
    assert any(r.pareto for r in ranked)


@pytest.mark.slow
def test_order_of_candidates_does_not_change_the_ranking(ranked_registry, data):
    a = rank(data, ["tiny_b", "tiny_a", "tiny_a@cut:stage1"], advise=False, use_cache=False)
    b = rank(data, ["tiny_a@cut:stage1", "tiny_a", "tiny_b"], advise=False, use_cache=False)
    assert [r.candidate for r in a.rows] == [r.candidate for r in b.rows]
    for ra, rb in zip(a.rows, b.rows, strict=True):
        assert ra.scores == pytest.approx(rb.scores)


@pytest.mark.slow
def test_features_and_scores_are_cached_per_candidate_and_data(ranked_registry, data, monkeypatch):
    calls = []
    extract = feature_mod.extract

    def counting(spec, *args, **kwargs):
        calls.append(spec.name)
        return extract(spec, *args, **kwargs)

    monkeypatch.setattr("zoo.select.rank.extract", counting)
    first = rank(data, ["tiny_a"], advise=False)
    second = rank(data, ["tiny_a", "tiny_b"], advise=False)  # only the new candidate is computed
    assert calls == ["tiny_a", "tiny_b"]
    rows = {r.candidate: r for r in second.rows}
    assert rows["tiny_a"].cached and not rows["tiny_b"].cached
    assert rows["tiny_a"].scores == first.rows[0].scores
    for i in range(10):  # the data changed (every red image, so the train split's too)
        (data / "red" / f"red_{i}.png").write_bytes((data / "blue" / f"blue_{i}.png").read_bytes())
    rank(data, ["tiny_a"], advise=False)
    assert calls == ["tiny_a", "tiny_b", "tiny_a"]


def test_ranking_by_another_estimate_and_pareto():
    def row(name, logme, ms):
        return Row(name, name, None, ms_per_image=ms, scores={"logme": logme, "probe": -logme})

    rows = rank_candidates([row("a", 1.0, 10.0), row("b", 2.0, 20.0), row("c", 0.5, 30.0)], "logme")
    assert [r.candidate for r in rows] == ["b", "a", "c"]
    assert [r.pareto for r in rows] == [True, True, False]  # c is worse and slower than a
    assert [r.candidate for r in rank_candidates(rows, "probe")] == ["c", "a", "b"]


def test_multi_label_data_is_ranked_by_logme_and_the_probe(ranked_registry, tmp_path):
    manifest = make_tagged(tmp_path / "tags", n=30)
    ranking = rank(manifest, ["tiny_a"], advise=False)
    row = ranking.rows[0]
    assert ranking.multi_label and row.error is None
    assert set(row.scores) == {"logme", "probe"}
    assert all("single-label" in row.missing[e] for e in ("hscore", "gbc", "leep"))


@pytest.mark.slow
def test_rank_cli_table_files_and_next_command(ranked_registry, data, tmp_path):
    out = tmp_path / "out"
    result = runner.invoke(app, ["rank", str(data), "tiny_a", "tiny_b", "tiny_none", "--out", str(out)])
    assert result.exit_code == 0, result.output
    folder = out / "rank-data"
    saved = json.loads((folder / "ranking.json").read_text())
    assert saved["winner"] in ("tiny_a", "tiny_b") and (folder / "ranking.png").stat().st_size > 1000
    assert "not ranked tiny_none: no pretrained weights" in result.output
    last = result.output.strip().splitlines()[-1]
    assert last.startswith(f"next: zoo finetune {saved['winner']} {data} --policy ")
    as_json = runner.invoke(app, ["rank", str(data), "tiny_a", "--json", "--out", str(out)])
    assert as_json.exit_code == 0 and json.loads(as_json.stdout)["folder"].endswith("rank-data-2")


@pytest.mark.parametrize(
    "args, message",
    [
        (["tiny_c"], "unknown backbone 'tiny_c'"),
        (["nosuch*"], "matches no backbone"),
        (["tiny_a", "--limit", "0"], "--limit 0"),
        (["tiny_a", "--estimate", "accuracy"], "--estimate accuracy"),
        (["tiny_a", "--max-params", "-1"], "--max-params"),
        (["tiny_a@cut:nosuch"], "no such group"),
    ],
)
def test_rank_cli_bad_values_are_one_line(ranked_registry, data, tmp_path, args, message):
    result = runner.invoke(app, ["rank", str(data), *args, "--out", str(tmp_path / "o")])
    if "no such group" in message:  # a bad cut is a row, and with no other candidate nothing is ranked
        assert result.exit_code == 3 and message in result.output
        return
    assert result.exit_code == 2 and message in result.output
    assert "Traceback" not in result.output


def test_rank_cli_one_class_and_no_pretrained_candidate(ranked_registry, tmp_path):
    one = make_images(tmp_path / "one", classes=("red",), per_class=6)
    result = runner.invoke(app, ["rank", str(one), "tiny_a", "--out", str(tmp_path / "o")])
    assert result.exit_code != 0 and "one class" in result.output
    data = make_images(tmp_path / "two", classes=("red", "blue"), per_class=6)
    result = runner.invoke(app, ["rank", str(data), "tiny_none", "--out", str(tmp_path / "o")])
    assert result.exit_code == 3 and "random features rank nothing" in result.output


@pytest.mark.slow
def test_finetune_auto_trains_the_winner_and_keeps_the_ranking(ranked_registry, data, tmp_path):
    args = ["finetune", "auto", str(data), "--candidates", "tiny_a,tiny_b", "--epochs", "1", "--out", str(tmp_path)]
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    ranking = summary["ranking"]
    assert summary["backbone"] == ranking["winner"]
    assert {r["candidate"] for r in ranking["rows"]} == {"tiny_a", "tiny_b"}
    assert summary["policy"]["name"] == ranking["policy"]  # zoo advise's pick for the winner
    refused = runner.invoke(app, ["finetune", "tiny_a", str(data), "--candidates", "tiny_b"])
    assert refused.exit_code == 2 and "--candidates: only with BACKBONE 'auto'" in refused.output


def test_features_match_the_model_and_source_probabilities_sum_to_one(ranked_registry, data):
    import torch

    from zoo.catalogue.registry import get_registry
    from zoo.data.split import load
    from zoo.model.build import choose_weights, create_model

    spec = get_registry().get("tiny_a")
    choice = choose_weights(spec, "default")
    split = load(data)
    found = feature_mod.extract(spec, choice, None, split.train, {})
    assert found.features.shape == (len(split.train), 32) and found.source_probs.shape == (len(split.train), 10)
    assert np.allclose(found.source_probs.sum(1), 1, atol=1e-5)
    # the probabilities are the pretrained model's own on the same images
    from zoo.training.loaders import ImageDataset, build_transform

    x = torch.stack([ImageDataset(split.train[:4], build_transform(spec.preprocess, "none"))[i][0] for i in range(4)])
    with torch.no_grad():
        expected = torch.softmax(create_model(spec, weights=choice).eval()(x), 1).numpy()
    assert np.allclose(found.source_probs[:4], expected, atol=1e-4)


def test_a_named_candidate_downloads_its_weights_then_it_is_at_hand(use_registry, served, data):
    """A user with a network names a candidate whose weights are not cached: they download (here from 127.0.0.1)
    into the torch cache, as for `zoo finetune`, and from then on the default candidate set has it."""
    import torch

    root, base = served
    torch.manual_seed(5)
    torch.save(build_tiny(None).state_dict(), root / "tiny_web-5e11.pt")
    digest = hashlib.sha256((root / "tiny_web-5e11.pt").read_bytes()).hexdigest()
    weights = Weights(tag="pre", url=f"{base}/tiny_web-5e11.pt", sha256=digest, categories=CATEGORIES)
    registry = use_registry(("web", plugin_module("web", tiny_spec("tiny_web", weights=(weights,),
                                                                  default_weights="pre"))))  # fmt: skip
    with pytest.raises(UsageError, match="no installed backbone has its pretrained weights at hand"):
        select_candidates([], None, None, 1, registry)  # nothing within 1 parameter
    assert "tiny_web" not in {c.label for c in select_candidates([], None, None, None, registry)}
    ranking = rank(data, ["tiny_web"], advise=False)
    assert ranking.winner is not None and ranking.winner.candidate == "tiny_web", ranking.rows[0].error
    assert "tiny_web" in {c.label for c in select_candidates([], None, None, None, registry)}


def test_hub_weights_are_at_hand_when_the_hub_cache_has_them(tmp_path, monkeypatch):
    from zoo.catalogue.weights import at_hand

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    weights = Weights(tag="in1k", url="hf-hub:timm/tiny_net.in1k")
    assert not at_hand(weights)
    snapshot = tmp_path / "hub" / "models--timm--tiny_net.in1k" / "snapshots" / "0123abc"
    snapshot.mkdir(parents=True)
    (snapshot / "model.safetensors").write_bytes(b"weights")
    assert at_hand(weights)
    assert not at_hand(Weights(tag="x", url="hf-hub:timm/other.in1k"))
