#!/usr/bin/env python
"""Describe every timm architecture as zoo `Backbone` data: `python -m zoo_timm.generate` writes models.json.

    python -m zoo_timm.generate                      # all of timm.list_models() (about 10 minutes on 2 cores)
    python -m zoo_timm.generate 'resnet*' -o x.json  # a subset (fnmatch patterns)

Registry data comes from timm without building a model: `_registry._model_default_cfgs[arch]`
(`.tags[0]` is the tag `create_model(arch, pretrained=True)` loads) and
`get_arch_pretrained_cfgs(arch)`: every pretrained tag with its input size, mean, std,
interpolation, crop_pct, crop_mode, number of classes, Hugging Face hub id and license.

Model data comes from the architecture built on the meta device (no memory, no init):
- head: `pretrained_cfg['classifier']` (the first; the others are `aux_heads`), an nn.Linear or a
  1x1 nn.Conv2d. Architectures whose default weights have no classifier are built with 1000 classes.
- groups: `model.group_matcher(coarse=True)` applied with timm's own `group_parameters` (ordinals,
  MATCH_PREV_GROUP, unmatched parameters last). The classifier's parameters become the `head`
  group, the rest of timm's last group `pre_logits`; unmatched parameters that run early (shared
  rel-pos / rope tables) join the group that runs before them. Without a group_matcher: timm's
  `feature_info` stages. Members are the shortest module paths covering exactly a group.
- layout: the tensors that cross each group boundary in zoo's own traced graph, shapes propagated
  on the meta device (NCHW, NHWC or NLC tokens).
- tracing: zoo's own cut (`zoo.model.cut.staged_graph`); where it fails, again with timm's tracing hints
  (its notrace modules and functions), recorded as `trace_hints`; where both fail, a note.

Every record passes zoo's `check_spec` and `GroupMap` (each parameter in exactly one group, the head
group last). `tests/test_timm.py` regenerates a sample and compares it with the committed file.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import inspect
import json
import math
import re
import sys
import time
import traceback
import warnings
from pathlib import Path

import timm
import torch
import torch.utils._pytree as pytree
from timm.models import _registry as R
from timm.models._manipulate import group_parameters, reinit_non_persistent_buffers
from torch import nn
from torch.fx.passes.shape_prop import TensorMetadata
from torch.overrides import TorchFunctionMode

from zoo.catalogue.backbone import check_spec
from zoo.model.build import check_groups
from zoo_timm import spec_of

HERE = Path(__file__).resolve().parent
DATA = HERE / "models.json"
PROBE_SIZES = (32, 64, 96, 128, 160, 192, 224, 256, 320, 384, 448, 512)
CPU_FALLBACK_MAX_PARAMS = 400_000_000  # a meta forward that fails is retried on uninitialised CPU memory up to this
FX = True  # also trace each model with zoo's cut tracer (--no-fx to skip)


class DescribeError(Exception):
    """The architecture cannot be described as a zoo backbone (the message says why)."""


def short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200] if text else ''}"


# ---------------------------------------------------------------- registry data (no model built)


def _r(x, nd=6):
    return round(float(x), nd)


def zoo_crop_pct(size: list[int], crop_pct: float) -> float:
    """timm resizes to floor(size / crop_pct), zoo to round(size / crop_pct): the crop_pct that gives timm's pixels."""
    side = max(size)
    resize = math.floor(side / crop_pct)
    effective = round(side / resize, 6)
    assert round(side / effective) == resize, (size, crop_pct)
    return effective


def label_set(cfg) -> str | None:
    """Which ImageNet label set a tag's classifier predicts ('imagenet-1k', 'imagenet-12k', ...), if any."""
    from timm.data import infer_imagenet_subset

    if not cfg.num_classes:
        return None
    try:
        return infer_imagenet_subset(cfg)
    except Exception:
        return None


def cfg_record(cfg) -> dict:
    """The zoo-relevant fields of one timm PretrainedCfg."""
    size = list(cfg.input_size[1:])
    rec = {
        "input_size": size,
        "mean": [_r(v) for v in cfg.mean],
        "std": [_r(v) for v in cfg.std],
        "interpolation": cfg.interpolation,
        "crop_pct": zoo_crop_pct(size, cfg.crop_pct or 0.875),
        "num_classes": cfg.num_classes,
        "license": cfg.license or "",
    }
    if cfg.crop_mode and cfg.crop_mode != "center":
        rec["crop_mode"] = cfg.crop_mode
    if cfg.hf_hub_id:
        rec["hf_hub_id"] = cfg.hf_hub_id
    elif cfg.url:
        rec["url"] = cfg.url
    labels = label_set(cfg)
    if labels:
        rec["labels"] = labels
    return rec


def registry_data(arch: str) -> dict:
    dc = R._model_default_cfgs[arch]
    cfgs = R.get_arch_pretrained_cfgs(arch)  # 'arch.tag' -> PretrainedCfg, in DefaultCfg.tags order
    tags = {}
    for full, cfg in cfgs.items():
        if cfg.has_weights:
            tags[R.split_model_name_tag(full)[1]] = cfg_record(cfg)
    default_cfg = dc.default  # == get_pretrained_cfg(arch)
    return {
        "default_tag": dc.tags[0] if dc.is_pretrained else None,
        "tags": tags,
        "preprocess": {
            k: v
            for k, v in cfg_record(default_cfg).items()
            if k in ("input_size", "mean", "std", "interpolation", "crop_pct", "crop_mode")
        },
        "fixed_input_size": bool(default_cfg.fixed_input_size),
        "cfg_min_input_size": list(default_cfg.min_input_size[1:]) if default_cfg.min_input_size else None,
        "classifier": default_cfg.classifier,
        "default_num_classes": default_cfg.num_classes,
    }


# ---------------------------------------------------------------- building


def build_meta(arch: str, **kwargs) -> nn.Module:
    with torch.device("meta"):
        return timm.create_model(arch, **kwargs).eval()


def heads_of(model: nn.Module, classifier) -> list[str]:
    names = [classifier] if isinstance(classifier, str) else list(classifier or ())
    return names


def check_head(model: nn.Module, path: str) -> str | None:
    """None when `path` is a Linear or a 1x1 Conv2d of the model; else why not."""
    try:
        mod = model.get_submodule(path)
    except AttributeError:
        return f"classifier '{path}' is not a module of the model"
    if isinstance(mod, nn.Linear):
        return None
    if isinstance(mod, nn.Conv2d) and tuple(mod.kernel_size) == (1, 1):
        return None
    return f"classifier '{path}' is {type(mod).__name__}"


def classifier_paths(model: nn.Module) -> list[str]:
    """Dotted paths of the Linear / 1x1 Conv layers behind `model.get_classifier()` (one, or a tuple of them)."""
    found = getattr(model, "get_classifier", lambda: None)()
    found = found if isinstance(found, (tuple, list)) else (found,)
    names = {id(m): n for n, m in model.named_modules()}
    paths = []
    for c in found:
        if not isinstance(c, nn.Module) or id(c) not in names:
            continue
        layers = (
            [c]
            if isinstance(c, (nn.Linear, nn.Conv2d))
            else [m for m in c.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
        )
        if layers:
            paths.append(names[id(layers[-1])])
    return paths


def supports_kwarg(model: nn.Module, name: str) -> bool:
    try:
        return name in inspect.signature(type(model).__init__).parameters
    except (TypeError, ValueError):
        return False


# ---------------------------------------------------------------- grouping


def compiled_matcher(gm: dict) -> list[tuple[int, re.Pattern]]:
    """(dict key index, regex) in the order timm's group_with_matcher tries them."""
    out = []
    for i, (_, spec) in enumerate(gm.items()):
        if spec is None:
            continue
        if isinstance(spec, (tuple, list)):
            out += [(i, re.compile(s[0])) for s in spec]
        else:
            out.append((i, re.compile(spec)))
    return out


def feature_info_matcher(model: nn.Module, first_use: dict[str, int]):
    """A callable matcher from timm's feature_info: each stage module (and the siblings before it) one group."""
    mods = []
    for f in getattr(model, "feature_info", []) or []:
        name = f["module"] if isinstance(f, dict) else None
        if name and name not in mods:
            try:
                model.get_submodule(name)
            except AttributeError:
                continue
            mods.append(name)
    if not mods:
        raise DescribeError("no group_matcher and no feature_info")
    # a stage k covers container children (previous stage index, its index]
    bounds = []  # (container, lo, hi, k)
    prev: dict[str, int] = {}
    for k, m in enumerate(mods):
        parent, _, idx = m.rpartition(".")
        if idx.isdigit():
            lo = prev.get(parent, -1)
            bounds.append((parent, lo, int(idx), k))
            prev[parent] = int(idx)
        else:
            bounds.append((m, None, None, k))
    first_stage_use = min(
        (first_use.get(n, 1 << 60) for n, _ in model.named_parameters() if n.startswith(mods[0] + ".")),
        default=1 << 60,
    )

    def matcher(name: str):
        for container, lo, hi, k in bounds:
            if lo is None:
                if name == container or name.startswith(container + "."):
                    return (1, k)
                continue
            if name.startswith(container + "."):
                idx = name[len(container) + 1 :].split(".", 1)[0]
                if idx.isdigit() and lo < int(idx) <= hi:
                    return (1, k)
        if first_use.get(name, 1 << 60) < first_stage_use:
            return (0,)
        return (float("inf"),)

    return matcher


def timm_groups(model: nn.Module, first_use: dict[str, int]) -> tuple[list[tuple[str, list[str]]], str]:
    """timm's coarse groups as (zoo base name, param names), in timm's order; the unmatched group is named ''."""
    source = "group_matcher(coarse=True)"
    gm = None
    if hasattr(model, "group_matcher"):
        try:
            gm = model.group_matcher(coarse=True)
        except AssertionError:  # RDNet: "coarse grouping is not implemented"
            gm = model.group_matcher(coarse=False)
            source = "group_matcher(coarse=False)"
    if gm is None:
        gm = feature_info_matcher(model, first_use)
        source = "feature_info"
    grouped = group_parameters(model, gm)  # lid -> [param names], timm's own function
    if isinstance(gm, dict):
        keys = list(gm.keys())
        compiled = compiled_matcher(gm)

        def key_of(name):
            for i, rx in compiled:
                if rx.match(name):
                    return keys[i]
            return ""
    else:

        def key_of(name):
            o = gm(name)
            o = o if isinstance(o, tuple) else (o,)
            if o[0] == float("inf"):
                return ""
            if source == "feature_info":
                return "stem" if o == (0,) else "blocks"
            return "stem" if o[0] == 0 else "blocks"

    out = []
    for lid in sorted(grouped):
        params = grouped[lid]
        counts = collections.Counter(key_of(p) for p in params)
        # a MATCH_PREV_GROUP entry (a final norm) joins the group before it: name it by its majority key
        named_keys = [k for k, _ in counts.most_common() if k]
        key = named_keys[0] if named_keys else ""
        out.append((key, params))
    return out, source


def covering_members(all_params: list[str], owner: dict[str, int], group: int) -> list[str]:
    """Shortest dotted prefixes whose parameters all belong to `group` and together cover its parameters."""
    under: dict[str, set[int]] = collections.defaultdict(set)
    for p in all_params:
        parts = p.split(".")
        for k in range(1, len(parts) + 1):
            under[".".join(parts[:k])].add(owner[p])
    members: list[str] = []
    seen = set()
    for p in all_params:
        if owner[p] != group:
            continue
        parts = p.split(".")
        for k in range(1, len(parts) + 1):
            prefix = ".".join(parts[:k])
            if under[prefix] == {group}:
                if prefix not in seen:
                    seen.add(prefix)
                    members.append(prefix)
                break
    return members


# ---------------------------------------------------------------- tracing with zoo's own cut

HINTS = "zoo_timm.build:trace_hints"


def _trace(model, spec, groups, size, device, warn: list[str]) -> dict | None:
    """What zoo's cut sees: tensors crossing each boundary and their layout; None (and a warning) if it cannot."""
    from zoo.core.errors import CutError
    from zoo.model.cut import activations_crossing, staged_graph

    try:
        gm, stage = staged_graph(model, spec)
    except CutError as exc:
        warn.append(str(exc).split(": ", 1)[-1])
        return None
    occ = collections.Counter(stage[n] for n in gm.graph.nodes if n.op in ("call_module", "get_attr"))
    crossing = [activations_crossing(gm, stage, k) for k in range(1, len(groups))]
    fmt = getattr(model, "output_fmt", None)
    try:
        from torch.fx.passes.shape_prop import ShapeProp

        ShapeProp(gm).propagate(torch.zeros(2, 3, *size, device=device))
        seen = [
            "+".join(
                layout_of(torch.empty(n.meta["tensor_meta"].shape, device="meta"), fmt)
                if isinstance(n.meta.get("tensor_meta"), TensorMetadata)
                else "other"
                for n in nodes
            )
            for nodes in crossing
        ]
    except Exception as exc:
        seen = None
        warn.append(f"shape propagation on the traced graph fails: {short(exc)}")
    return {
        "cuts": [len(c) for c in crossing],
        "empty": [groups[i][0] for i in range(len(groups)) if not occ.get(i)],
        "boundary_layouts": seen,
    }


# ---------------------------------------------------------------- forward analysis


class ParamUse(TorchFunctionMode):
    """Records, for each parameter, the index of the first op that reads it."""

    def __init__(self, names: dict[int, str]):
        super().__init__()
        self.names = names
        self.first: dict[str, int] = {}
        self.n = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        for a in pytree.tree_leaves((args, kwargs)):
            if isinstance(a, torch.Tensor):
                name = self.names.get(id(a))
                if name is not None and name not in self.first:
                    self.first[name] = self.n
        self.n += 1
        return func(*args, **kwargs)


def layout_of(out, model_fmt: str | None) -> str:
    if isinstance(out, (tuple, list)):
        inner = [layout_of(o, model_fmt) for o in out if isinstance(o, torch.Tensor)]
        return "tuple(" + ",".join(inner) + ")"
    if not isinstance(out, torch.Tensor):
        return type(out).__name__
    s = tuple(out.shape)
    if len(s) == 3:
        return "NLC"
    if len(s) == 2:
        return "NC"
    if len(s) == 4:
        _, a, b, c = s
        if b == c and a != b:
            return "NCHW"
        if a == b and c != a:
            return "NHWC"
        return model_fmt if model_fmt in ("NCHW", "NHWC") else "NCHW?"
    return f"{len(s)}D"


def overall_layout(layouts: list[str]) -> tuple[str, list[str]]:
    """One features_layout for the spec: what matters to zoo is the layout of 4-D boundary tensors."""
    parts = [p for x in layouts for p in x.replace("tuple(", "").replace(")", "").replace("+", ",").split(",")]
    four = collections.Counter(p.rstrip("?") for p in parts if p in ("NCHW", "NHWC", "NCHW?"))
    if four:
        # the majority of 4-D boundaries; a spec has one features_layout (pvt_v2: NHWC stem, NCHW stages)
        best = "NHWC" if four["NHWC"] > four["NCHW"] else "NCHW"
        return best, ([f"group outputs mix NCHW and NHWC ({dict(four)})"] if len(four) > 1 else [])
    if "NLC" in parts:
        return "NLC", []
    return "NCHW", [f"no group output layout detected: {layouts}"]


def forward_probe(model: nn.Module, size: tuple[int, int], device) -> None:
    x = torch.zeros(2, 3, *size, device=device)
    with torch.no_grad():
        model(x)


def analyse_forward(model, members_by_group, size, device):
    """(param first-use index, {group index: output layout}) from one forward."""
    names = {id(p): n for n, p in model.named_parameters()}
    calls = []  # (group index, output)
    hooks = []
    modules = dict(model.named_modules())
    for gi, members in enumerate(members_by_group):
        for m in members:
            if m in modules:
                hooks.append(modules[m].register_forward_hook(lambda mod, i, o, gi=gi: calls.append((gi, o))))
    fmt = getattr(model, "output_fmt", None)
    fmt = fmt if isinstance(fmt, str) else None
    try:
        with ParamUse(names) as mode:
            forward_probe(model, size, device)
    finally:
        for h in hooks:
            h.remove()
    last = {}
    for gi, o in calls:
        last[gi] = o
    layouts = {gi: layout_of(o, fmt) for gi, o in last.items()}
    return mode.first, layouts


def min_size(model, size, device) -> int:
    for s in PROBE_SIZES:
        if s >= min(size):
            return min(size)
        try:
            forward_probe(model, (s, s), device)
            return s
        except Exception:
            continue
    return min(size)


# ---------------------------------------------------------------- one architecture


def describe(arch: str) -> dict:
    rec: dict = {"name": arch, "module": R._model_to_module.get(arch), "error": None}
    reg = registry_data(arch)
    rec.update(default_tag=reg["default_tag"], tags=reg["tags"], preprocess=reg["preprocess"])
    rec["fixed_input_size"] = reg["fixed_input_size"]
    warn: list[str] = []
    build_kwargs: dict = {}
    try:
        model = build_meta(arch)
    except Exception as exc:
        raise DescribeError(f"build on meta: {short(exc)}") from None
    rec["num_params"] = sum(p.numel() for p in model.parameters())  # as pretrained (its head size)
    rec["dynamic_img_size"] = supports_kwarg(model, "dynamic_img_size")
    heads = heads_of(model, reg["classifier"])
    problems = [check_head(model, h) for h in heads] if heads else ["pretrained_cfg has no classifier"]
    if any(problems):
        # the default weights have no classifier (num_classes=0): build with one
        try:
            model = build_meta(arch, num_classes=1000)
            build_kwargs["num_classes"] = 1000
        except Exception as exc:
            raise DescribeError(f"build with num_classes=1000: {short(exc)}") from None
        if not heads:  # pretrained_cfg['classifier'] is None: take get_classifier() if it is a module
            c = getattr(model, "get_classifier", lambda: None)()
            found = [n for n, m in model.named_modules() if m is c and c is not None]
            heads = found[:1]
        problems = [check_head(model, h) for h in heads] if heads else ["no classifier module (encoder-only model)"]
        if any(problems):
            raise DescribeError("; ".join(p for p in problems if p))
    # every classifier the model has (get_classifier()), not only those the default cfg names: LeViT-384 s8
    # has no pretrained cfg listing its head_dist, but its forward averages both heads
    heads += [h for h in classifier_paths(model) if h not in heads and not check_head(model, h)]
    head, aux = heads[0], heads[1:]
    rec["head"], rec["aux_heads"] = head, aux
    rec["build_kwargs"] = build_kwargs

    size = tuple(reg["preprocess"]["input_size"])
    device = torch.device("meta")
    params = [n for n, _ in model.named_parameters()]

    # first forward (no groups yet) gives the parameter order, needed by the feature_info fallback
    try:
        first_use, _ = analyse_forward(model, [], size, device)
    except Exception as exc:
        meta_err = short(exc)
        if rec["num_params"] > CPU_FALLBACK_MAX_PARAMS:
            raise DescribeError(f"forward on meta: {meta_err}") from None
        model = model.to_empty(device="cpu")
        reinit_non_persistent_buffers(model)
        device = torch.device("cpu")
        try:
            first_use, _ = analyse_forward(model, [], size, device)
        except Exception as exc2:
            raise DescribeError(f"forward on meta: {meta_err}; on cpu: {short(exc2)}") from None
        warn.append(f"meta forward fails ({meta_err}); analysed on cpu")

    tgroups, source = timm_groups(model, first_use)
    rec["grouping"] = source
    head_paths = [head, *aux]
    is_head = lambda p: any(p == h or p.startswith(h + ".") for h in head_paths)  # noqa: E731
    head_params = [p for p in params if is_head(p)]
    if not head_params:
        raise DescribeError(f"classifier '{head}' has no parameters")
    last_key = tgroups[-1][0]
    if any(is_head(p) for key, ps in tgroups[:-1] for p in ps):
        warn.append("timm groups the classifier with an earlier group")
    # (name key, params) without the head; the unmatched ('' key) group becomes pre_logits
    body = []
    for key, ps in tgroups:
        ps = [p for p in ps if not is_head(p)]
        if ps:
            body.append((key, ps))
    if last_key != "":
        warn.append("every parameter matched a group_matcher pattern (no unmatched last group)")

    # names: stem / stage1..N or block1..N / other keys numbered / pre_logits / head
    per_key = collections.Counter(k for k, _ in body)
    counters = collections.Counter()
    owner: dict[str, int] = {}
    named: list[tuple[str, str, list[str]]] = []  # (zoo name, key, params)
    for key, ps in body:
        counters[key] += 1
        n = counters[key]
        if key == "":
            name = "pre_logits" if per_key[""] == 1 else f"pre_logits{n}"
        elif key == "stem":
            name = "stem" if per_key[key] == 1 else f"stem{n}"
        elif key in ("blocks", "block_types"):
            name = f"@{n}"  # stage or block, decided by the layout below
        else:
            base = re.sub(r"[^a-z0-9_]", "_", key.lower())
            base = base[:-1] if base.endswith("blocks") else base
            name = base if per_key[key] == 1 else (f"{base}_{n}" if base[-1].isdigit() else f"{base}{n}")
        named.append((name, key, ps))
    named.append(("head", "head", head_params))
    # timm's unmatched parameters (pre_logits) that run before the last body group starts are shared stem-like
    # parameters its patterns missed (a shared rel-pos / rope module): they join the group that runs just before them
    body_idx = [i for i, (n, k, _) in enumerate(named) if k not in ("", "head")]
    if body_idx and first_use:
        start_last = min((first_use.get(p, 1 << 60) for p in named[body_idx[-1]][2]), default=1 << 60)
        tmp_owner = {p: i for i, (_, _, ps) in enumerate(named) for p in ps}
        order = sorted(params, key=lambda p: first_use.get(p, 1 << 60))
        moved = collections.Counter()
        for _, key, ps in named:
            if key != "":
                continue
            for p in list(ps):
                if first_use.get(p, 1 << 60) >= start_last:
                    continue
                before = [q for q in order[: order.index(p)] if named[tmp_owner[q]][1] not in ("", "head")]
                target = tmp_owner[before[-1]] if before else body_idx[0]
                ps.remove(p)
                named[target][2].append(p)
                tmp_owner[p] = target
                moved[named[target][0]] += 1
        if moved:
            what = {n.replace("@", "stage/block"): c for n, c in moved.items()}
            warn.append(f"moved {sum(moved.values())} unmatched parameter(s) used early into {what}")
        named = [g for g in named if g[2]]
    for gi, (_, _, ps) in enumerate(named):
        for p in ps:
            owner[p] = gi
    members = [covering_members(params, owner, gi) for gi in range(len(named))]

    first_use, layouts = analyse_forward(model, members, size, device)
    # timm 'blocks' groups: transformer blocks (token outputs, paths like blocks.N) are block1..N, else stage1..N
    staged = [gi for gi, (n, _, _) in enumerate(named) if n.startswith("@")]
    transformer = bool(staged) and all(
        layouts.get(gi, "").startswith("NLC") and any("block" in m.split(".")[0] for m in members[gi]) for gi in staged
    )
    base = "block" if transformer else "stage"
    groups = []
    for gi, (name, _, _) in enumerate(named):
        groups.append([name.replace("@", base), members[gi]])
    rec["groups"] = groups
    body_layouts = [layouts.get(gi, "?") for gi in range(len(named) - 1)]
    rec["layouts"] = body_layouts
    rec["features_layout"], lw = overall_layout(body_layouts)
    warn.extend(lw)
    if any(x.startswith("tuple") for x in body_layouts):
        warn.append("a group outputs a tuple (cut: needs a single tensor)")

    # groups must be used in order: parameters in first-use order should have non-decreasing group index
    seq = sorted((first_use[p], owner[p], p) for p in params if p in first_use)
    inversions = []
    high = -1
    for _, g, p in seq:
        if g < high:
            inversions.append(f"{p} ({groups[g][0]}) after {groups[high][0]}")
        high = max(high, g)
    if inversions:
        warn.append(f"{len(inversions)} parameter(s) used out of group order, e.g. {inversions[0]}")
    unused = [p for p in params if p not in first_use]
    if unused:
        warn.append(f"{len(unused)} parameter(s) unused in the eval forward, e.g. {unused[0]}")

    rec["min_input_size"] = max(32, min_size(model, size, device)) if not reg["fixed_input_size"] else min(size)
    if reg["cfg_min_input_size"]:
        rec["min_input_size"] = max(rec["min_input_size"], min(reg["cfg_min_input_size"]))

    # zoo's own checks, on the very spec the plugin will register from this record
    spec = dataclasses.replace(spec_of(rec, {}), source="timm")
    check_spec(spec)
    check_groups(model, spec)
    if FX:
        traced = _trace(model, spec, groups, size, device, warn)
        if traced is None:
            rec["trace_hints"] = True
            traced = _trace(model, dataclasses.replace(spec, trace_hints=HINTS), groups, size, device, warn)
        if traced is None:
            rec.pop("trace_hints")
            rec["fx"] = warn.pop()
        if rec.get("trace_hints") or rec.get("fx") or rec["features_layout"] != spec.features_layout:
            check_spec(dataclasses.replace(spec_of(rec, {}), source="timm"))
        else:
            rec["cuts"] = traced["cuts"]
            if traced["boundary_layouts"]:
                rec["layouts"] = traced["boundary_layouts"]  # replaces the hook-based guess
                rec["features_layout"], lw = overall_layout(traced["boundary_layouts"])
                warn[:] = [w for w in warn if not w.startswith(("group outputs mix", "no group output layout"))] + lw
            if traced["empty"]:
                rec["fx_empty_groups"] = traced["empty"]  # no node of the traced graph is theirs: no cut there
    rec["warnings"] = warn
    return rec


KEEP = (
    "name", "module", "default_tag", "tags", "preprocess", "num_params", "head", "aux_heads", "build_kwargs",
    "groups", "features_layout", "min_input_size", "trace_hints", "fx", "error",
)  # fmt: skip


def describe_all(names: list[str], report=None) -> tuple[dict, dict]:
    """(the models.json document, diagnostics by architecture) for these architectures; `report(i, arch, record)`
    hears of each."""
    from timm.data import ImageNetInfo

    records = []
    for i, arch in enumerate(names):
        t = time.perf_counter()
        try:
            rec = describe(arch)
        except DescribeError as exc:
            rec = {"name": arch, "module": R._model_to_module.get(arch), "error": str(exc)}
        except Exception as exc:  # a bug here, or zoo's check refusing the spec
            tb = traceback.extract_tb(exc.__traceback__)[-1]
            rec = {
                "name": arch,
                "module": R._model_to_module.get(arch),
                "error": f"{short(exc)} [at {Path(tb.filename).name}:{tb.lineno}]",
            }
        rec["seconds"] = round(time.perf_counter() - t, 3)
        if report:
            report(i, arch, rec)
        records.append(rec)
    # the class names of ImageNet-1k heads; other label sets (in12k, in21k: tens of thousands of names) are
    # left out to keep listing fast: their weights say how many classes they have
    names = ImageNetInfo("imagenet-1k").label_descriptions()
    categories = {"imagenet-1k": [d.split(",")[0].strip() for d in names]}
    return {
        "generated_by": "python -m zoo_timm.generate",
        "timm": timm.__version__,
        "torch": torch.__version__.split("+")[0],
        "categories": categories,
        "models": [{k: r[k] for k in KEEP if r.get(k) not in (None, [], {}, False)} for r in records],
    }, {r["name"]: {k: r[k] for k in ("warnings", "cuts", "layouts", "seconds") if k in r} for r in records}


def dumps(doc: dict) -> str:
    return json.dumps(doc, separators=(",", ":"), sort_keys=False)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Describe timm's architectures as zoo backbones (models.json).")
    ap.add_argument("patterns", nargs="*", help="fnmatch patterns (default: every architecture)")
    ap.add_argument("-o", "--out", default=str(DATA))
    ap.add_argument("--no-fx", action="store_true", help="skip the torch.fx trace of each model")
    ap.add_argument("--diagnostics", help="also write each architecture's warnings, cuts and layouts (JSON)")
    args = ap.parse_args(argv)
    global FX
    FX = not args.no_fx
    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    names = timm.list_models(args.patterns or "")
    t0 = time.perf_counter()

    def report(i, arch, rec):
        if rec.get("error"):
            print(f"[{i + 1}/{len(names)}] {arch}: not described: {rec['error']}", file=sys.stderr, flush=True)
        elif (i + 1) % 50 == 0:
            print(f"[{i + 1}/{len(names)}] {time.perf_counter() - t0:.0f}s", file=sys.stderr, flush=True)

    doc, diagnostics = describe_all(names, report)
    text = dumps(doc)
    Path(args.out).write_text(text + "\n", encoding="utf-8")
    if args.diagnostics:
        Path(args.diagnostics).write_text(json.dumps(diagnostics, indent=1) + "\n", encoding="utf-8")
    errors = sum(1 for r in doc["models"] if r.get("error"))
    print(
        f"wrote {args.out}: {len(doc['models'])} architectures, {errors} not described, {len(text) / 1e6:.2f} MB, "
        f"{time.perf_counter() - t0:.1f}s",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
