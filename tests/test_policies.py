"""Freeze policies: parsing, plans, and that training touches exactly the parameters a policy says."""

from __future__ import annotations

import pytest
import torch

from conftest import make_images, plugin_module
from zoo.catalogue.policies import Policy, parse_policy
from zoo.core.errors import PolicyError
from zoo.model.checkpoint import read_checkpoint
from zoo.training.train import finetune

GROUPS = ("stem", "stage1", "stage2", "head")


def frozen(text: str) -> int:
    return parse_policy(text).plan(GROUPS).frozen


def test_builtin_policies_parse():
    assert parse_policy("feature-extract").head_only
    assert frozen("linear-probe") == 3
    assert frozen("freeze:2") == 2
    assert frozen("freeze:stage1") == 2
    assert frozen("finetune") == 0
    assert parse_policy("scratch").pretrained is False
    assert parse_policy("cut:stage1").cut == "stage1"
    plan = parse_policy("discriminative:0.5").plan(GROUPS)
    assert plan.lr_mults == (0.125, 0.25, 0.5, 1.0)
    assert all(plan.trainable(0).values())


def test_gradual_unfreezes_one_group_from_the_top_every_n_epochs():
    plan = parse_policy("gradual:2").plan(GROUPS)
    assert [plan.frozen_at(e) for e in range(8)] == [3, 3, 2, 2, 1, 1, 0, 0]
    assert list(plan.trainable(4).values()) == [False, True, True, True]


def test_freeze_head_is_refused_not_feature_extract():
    """`freeze:head` once meant feature-extract by accident: "head" was also the head-only sentinel."""
    with pytest.raises(PolicyError, match="'head' is the head group, which always trains"):
        parse_policy("freeze:head").plan(GROUPS)
    assert not parse_policy("freeze:head").head_only


def test_legacy_frozen_head_in_data_still_means_head_only():
    policy = Policy.from_dict({"name": "old", "frozen": "head"})
    assert policy.head_only and policy.plan(GROUPS).frozen == 3


@pytest.mark.parametrize("factor", ["nan", "inf", "-inf"])
def test_non_finite_lr_factors_are_refused(factor):
    with pytest.raises(PolicyError, match="finite"):
        parse_policy(f"discriminative:{factor}")


@pytest.mark.parametrize(
    "text, message",
    [
        ("freeze", "needs K"),
        ("freeze:4", "can freeze 0 to 3"),
        ("freeze:stage9", "no group 'stage9'"),
        ("discriminative:x", "needs a finite factor"),
        ("discriminative:-1", "must be > 0"),
        ("gradual:0", "N must be >= 1"),
        ("cut", "needs a group"),
        ("warp-speed", "unknown policy 'warp-speed'; choose from"),
    ],
)
def test_bad_policies_are_explained(text, message):
    with pytest.raises(PolicyError, match=message):
        parse_policy(text).plan(GROUPS)


def test_registry_and_plugin_policies(use_registry):
    def top_two(arg):
        return Policy(f"top-two:{arg}", frozen=int(arg or 2))

    registry = use_registry(("policy_plugin", plugin_module("policy_plugin", policies=[("top-two", top_two)])))
    assert frozen("top-two:1") == 1
    ulmfit = parse_policy("ulmfit", registry)  # declared as data in registry.toml
    assert ulmfit.unfreeze_every == 1 and ulmfit.lr_decay == pytest.approx(1 / 2.6, rel=1e-3)
    fastai = parse_policy("fine-tune-fastai", registry)
    assert [fastai.plan(GROUPS).frozen_at(e) for e in range(3)] == [3, 0, 0]


def _train(tmp_path, policy, cache="auto", epochs=2, **options):
    data = make_images(tmp_path / "data", per_class=10)
    return finetune(
        "tiny",
        data,
        policy=policy,
        epochs=epochs,
        batch_size=8,
        out=str(tmp_path / "runs"),
        weights="none",
        cache=cache,
        workers=0,
        **options,
    )


def _state(run_dir):
    return read_checkpoint(run_dir / "last.pt")["model"]


def _initial(tmp_path):
    torch.manual_seed(0)
    from zoo.model.build import create_model

    return create_model("tiny", num_classes=2, weights="none").state_dict()


@pytest.mark.parametrize(
    "policy, frozen",
    [
        ("feature-extract", ["stem", "stage1", "stage2"]),
        ("freeze:2", ["stem", "stage1"]),
        ("freeze:stage2", ["stem", "stage1", "stage2"]),
        ("finetune", []),
        ("discriminative:0.5", []),
    ],
)
@pytest.mark.parametrize("cache", ["auto", pytest.param("off", marks=pytest.mark.slow)])
def test_policy_trains_exactly_the_right_parameters(tmp_path, tiny_registry, policy, frozen, cache):
    before = _initial(tmp_path)
    result = _train(tmp_path, policy, cache=cache)
    after = _state(result.run_dir)
    for name, value in before.items():
        group = name.split(".")[0]
        if "num_batches_tracked" in name:
            continue
        if group in frozen:
            assert torch.equal(after[name], value), f"{name} moved under {policy}"  # bit-identical, BN stats too
        elif name.endswith("weight") and "running" not in name:
            assert not torch.equal(after[name], value), f"{name} did not train under {policy}"
    assert (result.summary["cache"] is not None) == (cache == "auto" and bool(frozen))


def test_train_bn_lets_frozen_batchnorm_statistics_move(tmp_path, tiny_registry):
    before = _initial(tmp_path)
    after = _state(_train(tmp_path, "feature-extract", train_bn=True).run_dir)
    assert torch.equal(after["stem.0.weight"], before["stem.0.weight"])
    assert not torch.equal(after["stem.1.running_mean"], before["stem.1.running_mean"])


def test_gradual_unfreezes_at_the_right_epochs(tmp_path, tiny_registry):
    before = _initial(tmp_path)
    result = _train(tmp_path, "gradual:1", epochs=3, augment="light")
    after = _state(result.run_dir)
    assert torch.equal(after["stem.0.weight"], before["stem.0.weight"])  # unfreezes at epoch 4
    assert not torch.equal(after["stage1.0.weight"], before["stage1.0.weight"])  # from epoch 3
    ckpt = read_checkpoint(result.run_dir / "last.pt")
    groups = [g["group"] for g in ckpt["optimizer"]["param_groups"]]
    assert groups == ["head", "head", "stage2", "stage2", "stage1", "stage1"]  # each: decay, then no decay


def test_scratch_ignores_pretrained_weights(tmp_path, use_registry):
    """With default pretrained weights registered, freeze:1 keeps them in the stem; scratch starts from random."""
    from conftest import build_tiny, tiny_spec
    from zoo import Weights
    from zoo.catalogue.weights import sha256_of

    pretrained = build_tiny(None).state_dict()
    pretrained["stem.0.weight"].fill_(0.5)
    path = tmp_path / "tiny-weights.pt"
    torch.save(pretrained, path)
    weights = Weights("mine", path.as_uri(), sha256=sha256_of(path))
    use_registry(("p", plugin_module("p", tiny_spec(weights=(weights,), default_weights="mine"))))
    data = make_images(tmp_path / "data", per_class=10)
    options = dict(epochs=1, batch_size=8, out=str(tmp_path / "runs"), workers=0)
    kept = finetune("tiny", data, policy="freeze:1", **options)
    assert kept.summary["weights"] == "mine"
    assert torch.equal(_state(kept.run_dir)["stem.0.weight"], pretrained["stem.0.weight"])
    scratch = finetune("tiny", data, policy="scratch", **options)
    assert scratch.summary["weights"] == "none"
    assert not torch.isclose(_state(scratch.run_dir)["stem.0.weight"], torch.tensor(0.5)).any()


def test_cut_puts_a_new_head_on_an_inner_group(tmp_path, tiny_registry):
    result = _train(tmp_path, "cut:stage1", epochs=2)
    state = _state(result.run_dir)
    assert state["fc.weight"].shape == (2, 16)  # stage1 has 16 channels
    assert not any(k.startswith("stage2") for k in state)
    # the cut model's groups before the new head are frozen and fixed: trained on their cached activations
    assert result.summary["cache"]["boundary"] == "stage1" and all(row["cached"] for row in result.history)
    from zoo.model.checkpoint import load_model

    model, _ = load_model(result.run_dir)
    assert model(torch.zeros(3, 3, 32, 32)).shape == (3, 2)
    with pytest.raises(Exception, match="no such group before the head"):
        _train(tmp_path / "x", "cut:head", epochs=1)


@pytest.mark.slow
def test_cut_works_on_real_architectures():
    from zoo.catalogue.registry import get_registry
    from zoo.model.build import create_model
    from zoo.model.cut import cut_model

    for name, group, channels in [
        ("resnet18", "layer2", 128),
        ("mobilenet_v3_small", "stage2", 24),
        ("vit_b_16", "blocks2", 768),
    ]:
        spec = get_registry().get(name)
        model = create_model(spec, num_classes=4, weights="none").eval()
        cut, cut_spec = cut_model(model, spec, group, 3)
        assert cut.get_submodule(spec.head).in_features == channels
        size = max(64, spec.min_input_size)
        assert cut(torch.zeros(2, 3, size, size)).shape == (2, 3)
        assert cut_spec.group_names[-1] == "head"


@pytest.mark.slow
@pytest.mark.parametrize("name", ["efficientnet_lite0", "resnet18", "inception_v3"])
def test_every_boundary_cuts_into_per_image_tensors(name):
    """What crosses a boundary must be cacheable: tensors with the batch first, whatever batch comes later.

    efficientnet_lite0's forward takes `inputs.size(0)` at the top and uses it at the end.
    """
    from zoo.catalogue.registry import get_registry
    from zoo.model.build import create_model
    from zoo.model.cut import cut_at

    spec = get_registry().get(name)
    model = create_model(spec, num_classes=3, weights="none").eval()
    size = max(64, spec.min_input_size)
    x = torch.randn(3, 3, size, size)
    with torch.no_grad():
        ref = model(x)
        for k in range(1, len(spec.groups)):
            prefix, suffix = cut_at(model, spec, k)
            acts = prefix(x)
            assert all(isinstance(a, torch.Tensor) and a.shape[0] == 3 for a in acts), spec.groups[k - 1].name
            assert torch.allclose(suffix(*[a[:2] for a in acts]), ref[:2], atol=1e-4)
