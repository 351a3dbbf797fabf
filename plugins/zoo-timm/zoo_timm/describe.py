"""One timm architecture described as a zoo `Backbone` record of models.json (see `zoo_timm.generate`).

The steps: registry data (no model built); the model built on the meta device with a classifier zoo can
replace; a first forward for the order parameters are read in; timm's groups made zoo's; a second forward for
each group's output layout; zoo's own checks on the very spec the plugin registers; zoo's cut, traced.
"""

from __future__ import annotations

import dataclasses

import torch
from timm.models._manipulate import reinit_non_persistent_buffers
from torch import nn

from zoo.catalogue.backbone import check_spec
from zoo.model.build import check_groups
from zoo_timm import spec_of
from zoo_timm.groups import DescribeError, covering_members, move_early_unmatched, split_head, timm_groups, zoo_names
from zoo_timm.probes import (
    HINTS,
    analyse_forward,
    build_meta,
    check_head,
    classifier_paths,
    heads_of,
    min_size,
    overall_layout,
    short,
    supports_kwarg,
    trace_cut,
)
from zoo_timm.registry_data import module_of, registry_data

CPU_FALLBACK_MAX_PARAMS = 400_000_000  # a meta forward that fails is retried on uninitialised CPU memory up to this


def describe(arch: str, fx: bool = True) -> dict:
    """The record of `arch` (with its diagnostics: warnings, cuts, layouts, ...); DescribeError when it cannot be
    a zoo backbone. `fx`: also trace it with zoo's cut (`--no-fx` skips that)."""
    rec: dict = {"name": arch, "module": module_of(arch), "error": None}
    reg = registry_data(arch)
    rec.update(default_tag=reg["default_tag"], tags=reg["tags"], preprocess=reg["preprocess"])
    rec["fixed_input_size"] = reg["fixed_input_size"]
    warn: list[str] = []
    model = _build_with_head(arch, reg, rec)
    size = tuple(reg["preprocess"]["input_size"])
    model, device, first_use = _first_forward(model, rec["num_params"], size, warn)
    named, owner, members = _groups(model, first_use, rec, warn)
    groups, first_use = _layouts(model, named, members, size, device, rec, warn)
    warn += _order_warnings([n for n, _ in model.named_parameters()], first_use, owner, groups)
    rec["min_input_size"] = _min_input_size(model, reg, size, device)
    # zoo's own checks, on the very spec the plugin will register from this record
    spec = dataclasses.replace(spec_of(rec, {}), source="timm")
    check_spec(spec)
    check_groups(model, spec)
    if fx:
        _trace(model, spec, groups, size, device, rec, warn)
    rec["warnings"] = warn
    return rec


def _build_with_head(arch: str, reg: dict, rec: dict) -> nn.Module:
    """The model on the meta device with a classifier zoo can replace; sets the record's head, aux_heads,
    build_kwargs, num_params and dynamic_img_size."""
    build_kwargs: dict = {}
    try:
        model = build_meta(arch)
    except Exception as exc:
        raise DescribeError(f"build on meta: {short(exc)}") from None
    rec["num_params"] = sum(p.numel() for p in model.parameters())  # as pretrained (its head size)
    rec["dynamic_img_size"] = supports_kwarg(model, "dynamic_img_size")
    heads = heads_of(reg["classifier"])
    problems = [check_head(model, h) for h in heads] if heads else ["pretrained_cfg has no classifier"]
    if any(problems):
        # the default weights have no classifier (num_classes=0): build with one
        model, heads = _build_with_classifier(arch, heads)
        build_kwargs["num_classes"] = 1000
    # every classifier the model has (get_classifier()), not only those the default cfg names: LeViT-384 s8
    # has no pretrained cfg listing its head_dist, but its forward averages both heads
    heads += [h for h in classifier_paths(model) if h not in heads and not check_head(model, h)]
    rec["head"], rec["aux_heads"] = heads[0], heads[1:]
    rec["build_kwargs"] = build_kwargs
    return model


def _build_with_classifier(arch: str, heads: list[str]) -> tuple[nn.Module, list[str]]:
    """The model built with 1000 classes, and its classifier paths (`heads`, else its get_classifier())."""
    try:
        model = build_meta(arch, num_classes=1000)
    except Exception as exc:
        raise DescribeError(f"build with num_classes=1000: {short(exc)}") from None
    if not heads:  # pretrained_cfg['classifier'] is None: take get_classifier() if it is a module
        c = getattr(model, "get_classifier", lambda: None)()
        found = [n for n, m in model.named_modules() if m is c and c is not None]
        heads = found[:1]
    problems = [check_head(model, h) for h in heads] if heads else ["no classifier module (encoder-only model)"]
    if any(problems):
        raise DescribeError("; ".join(p for p in problems if p))
    return model, heads


def _first_forward(model: nn.Module, num_params: int, size, warn: list[str]):
    """(model, device, parameter first-use order) from a first forward (no groups yet; the feature_info fallback
    needs the order): on the meta device, else on uninitialised CPU memory for a model small enough."""
    device = torch.device("meta")
    try:
        first_use, _ = analyse_forward(model, [], size, device)
    except Exception as exc:
        meta_err = short(exc)
        if num_params > CPU_FALLBACK_MAX_PARAMS:
            raise DescribeError(f"forward on meta: {meta_err}") from None
        model = model.to_empty(device="cpu")
        reinit_non_persistent_buffers(model)
        device = torch.device("cpu")
        try:
            first_use, _ = analyse_forward(model, [], size, device)
        except Exception as exc2:
            raise DescribeError(f"forward on meta: {meta_err}; on cpu: {short(exc2)}") from None
        warn.append(f"meta forward fails ({meta_err}); analysed on cpu")
    return model, device, first_use


def _groups(model: nn.Module, first_use: dict[str, int], rec: dict, warn: list[str]):
    """(named groups (zoo name, timm key, params), parameter -> group index, each group's members); sets the
    record's grouping (where the groups come from)."""
    params = [n for n, _ in model.named_parameters()]
    tgroups, rec["grouping"] = timm_groups(model, first_use)
    body, head_params = split_head(tgroups, params, [rec["head"], *rec["aux_heads"]], warn)
    named = [*zoo_names(body), ("head", "head", head_params)]
    named = move_early_unmatched(named, params, first_use, warn)
    owner = {p: gi for gi, (_, _, ps) in enumerate(named) for p in ps}
    members = [covering_members(params, owner, gi) for gi in range(len(named))]
    return named, owner, members


def _layouts(model, named, members, size, device, rec: dict, warn: list[str]):
    """(groups as [zoo name, members], parameter first-use order) from a forward with a hook on each group; sets
    the record's groups, layouts and features_layout. timm 'blocks' groups are transformer blocks (token outputs,
    paths like blocks.N: block1..N), else stages (stage1..N)."""
    first_use, layouts = analyse_forward(model, members, size, device)
    staged = [gi for gi, (n, _, _) in enumerate(named) if n.startswith("@")]
    transformer = bool(staged) and all(
        layouts.get(gi, "").startswith("NLC") and any("block" in m.split(".")[0] for m in members[gi]) for gi in staged
    )
    base = "block" if transformer else "stage"
    groups = [[name.replace("@", base), members[gi]] for gi, (name, _, _) in enumerate(named)]
    rec["groups"] = groups
    body_layouts = [layouts.get(gi, "?") for gi in range(len(named) - 1)]
    rec["layouts"] = body_layouts
    rec["features_layout"], lw = overall_layout(body_layouts)
    warn.extend(lw)
    if any(x.startswith("tuple") for x in body_layouts):
        warn.append("a group outputs a tuple (cut: needs a single tensor)")
    return groups, first_use


def _order_warnings(params: list[str], first_use: dict[str, int], owner: dict[str, int], groups) -> list[str]:
    """Groups must be used in order: parameters in first-use order should have non-decreasing group index."""
    warn = []
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
    return warn


def _min_input_size(model: nn.Module, reg: dict, size, device) -> int:
    found = max(32, min_size(model, size, device)) if not reg["fixed_input_size"] else min(size)
    if reg["cfg_min_input_size"]:
        found = max(found, min(reg["cfg_min_input_size"]))
    return found


def _trace(model, spec, groups, size, device, rec: dict, warn: list[str]) -> None:
    """zoo's cut, traced: plain, else with timm's tracing hints (`trace_hints`), else a note (`fx`); what it sees
    of each boundary replaces the hook-based layouts."""
    traced = trace_cut(model, spec, groups, size, device, warn)
    if traced is None:
        rec["trace_hints"] = True
        traced = trace_cut(model, dataclasses.replace(spec, trace_hints=HINTS), groups, size, device, warn)
    if traced is None:
        rec.pop("trace_hints")
        rec["fx"] = warn.pop()
    if rec.get("trace_hints") or rec.get("fx") or rec["features_layout"] != spec.features_layout:
        check_spec(dataclasses.replace(spec_of(rec, {}), source="timm"))
        return
    rec["cuts"] = traced["cuts"]
    if traced["boundary_layouts"]:
        rec["layouts"] = traced["boundary_layouts"]  # replaces the hook-based guess
        rec["features_layout"], lw = overall_layout(traced["boundary_layouts"])
        warn[:] = [w for w in warn if not w.startswith(("group outputs mix", "no group output layout"))] + lw
    if traced["empty"]:
        rec["fx_empty_groups"] = traced["empty"]  # no node of the traced graph is theirs: no cut there
