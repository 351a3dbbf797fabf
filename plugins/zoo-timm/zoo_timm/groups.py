"""zoo's layer groups of a timm architecture, from timm's own grouping.

`model.group_matcher(coarse=True)` applied with timm's own `group_parameters` (ordinals, MATCH_PREV_GROUP,
unmatched parameters last). The classifier's parameters become the `head` group, the rest of timm's last group
`pre_logits`; unmatched parameters that run early (shared rel-pos / rope tables) join the group that runs before
them. Without a group_matcher: timm's `feature_info` stages. Members are the shortest module paths covering
exactly a group.

A parameter's "first use" is the index of the first op of the eval forward that reads it (`probes.analyse_forward`).
"""

from __future__ import annotations

import collections
import math
import re

from timm.models._manipulate import group_parameters
from torch import nn

NEVER = math.inf  # the first use of a parameter the forward never reads: after every other


class DescribeError(Exception):
    """The architecture cannot be described as a zoo backbone (the message says why)."""


def used_at(first_use: dict[str, int], name: str) -> float:
    """When the forward first reads parameter `name` (NEVER if it does not)."""
    return first_use.get(name, NEVER)


# ---------------------------------------------------------------- timm's groups


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


def _feature_modules(model: nn.Module) -> list[str]:
    """The module of each of timm's feature_info stages that the model has, in order, once each."""
    mods = []
    for f in getattr(model, "feature_info", []) or []:
        name = f["module"] if isinstance(f, dict) else None
        if name and name not in mods:
            try:
                model.get_submodule(name)
            except AttributeError:
                continue
            mods.append(name)
    return mods


def feature_info_matcher(model: nn.Module, first_use: dict[str, int]):
    """A callable matcher from timm's feature_info: each stage module (and the siblings before it) one group."""
    mods = _feature_modules(model)
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
        (used_at(first_use, n) for n, _ in model.named_parameters() if n.startswith(mods[0] + ".")), default=NEVER
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
        if used_at(first_use, name) < first_stage_use:
            return (0,)
        return (float("inf"),)

    return matcher


def _key_function(gm, source: str):
    """Which of timm's group names ('stem', 'blocks', ...) a parameter matches; '' for none."""
    if isinstance(gm, dict):
        keys = list(gm.keys())
        compiled = compiled_matcher(gm)

        def key_of(name):
            for i, rx in compiled:
                if rx.match(name):
                    return keys[i]
            return ""

        return key_of

    def key_of(name):
        o = gm(name)
        o = o if isinstance(o, tuple) else (o,)
        if o[0] == float("inf"):
            return ""
        if source == "feature_info":
            return "stem" if o == (0,) else "blocks"
        return "stem" if o[0] == 0 else "blocks"

    return key_of


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
    key_of = _key_function(gm, source)
    out = []
    for lid in sorted(grouped):
        params = grouped[lid]
        counts = collections.Counter(key_of(p) for p in params)
        # a MATCH_PREV_GROUP entry (a final norm) joins the group before it: name it by its majority key
        named_keys = [k for k, _ in counts.most_common() if k]
        key = named_keys[0] if named_keys else ""
        out.append((key, params))
    return out, source


# ---------------------------------------------------------------- zoo's groups


def split_head(
    tgroups: list[tuple[str, list[str]]], params: list[str], head_paths: list[str], warn: list[str]
) -> tuple[list[tuple[str, list[str]]], list[str]]:
    """(timm's groups without the classifier's parameters, the classifier's parameters)."""

    def is_head(p: str) -> bool:
        return any(p == h or p.startswith(h + ".") for h in head_paths)

    head_params = [p for p in params if is_head(p)]
    if not head_params:
        raise DescribeError(f"classifier '{head_paths[0]}' has no parameters")
    if any(is_head(p) for _, ps in tgroups[:-1] for p in ps):
        warn.append("timm groups the classifier with an earlier group")
    # (name key, params) without the head; the unmatched ('' key) group becomes pre_logits
    body = [(key, kept) for key, ps in tgroups if (kept := [p for p in ps if not is_head(p)])]
    if tgroups[-1][0] != "":
        warn.append("every parameter matched a group_matcher pattern (no unmatched last group)")
    return body, head_params


def zoo_names(body: list[tuple[str, list[str]]]) -> list[tuple[str, str, list[str]]]:
    """(zoo name, timm key, params) of each body group: stem / stage1..N or block1..N (named '@N' until the layout
    decides) / other keys numbered / pre_logits."""
    per_key = collections.Counter(k for k, _ in body)
    counters: collections.Counter = collections.Counter()
    named = []
    for key, ps in body:
        counters[key] += 1
        n = counters[key]
        if key == "":
            name = "pre_logits" if per_key[""] == 1 else f"pre_logits{n}"
        elif key == "stem":
            name = "stem" if per_key[key] == 1 else f"stem{n}"
        elif key in ("blocks", "block_types"):
            name = f"@{n}"  # stage or block, decided by the layout
        else:
            base = re.sub(r"[^a-z0-9_]", "_", key.lower())
            base = base[:-1] if base.endswith("blocks") else base
            name = base if per_key[key] == 1 else (f"{base}_{n}" if base[-1].isdigit() else f"{base}{n}")
        named.append((name, key, ps))
    return named


def move_early_unmatched(
    named: list[tuple[str, str, list[str]]], params: list[str], first_use: dict[str, int], warn: list[str]
) -> list[tuple[str, str, list[str]]]:
    """timm's unmatched parameters (pre_logits) that run before the last body group starts are shared stem-like
    parameters its patterns missed (a shared rel-pos / rope module): they join the group that runs just before
    them. Returns the groups left non-empty (the lists of `named` are changed in place)."""
    body_idx = [i for i, (_, k, _) in enumerate(named) if k not in ("", "head")]
    if not body_idx or not first_use:
        return named
    start_last = min((used_at(first_use, p) for p in named[body_idx[-1]][2]), default=NEVER)
    owner = {p: i for i, (_, _, ps) in enumerate(named) for p in ps}
    order = sorted(params, key=lambda p: used_at(first_use, p))
    moved: collections.Counter = collections.Counter()
    for _, key, ps in named:
        if key != "":
            continue
        for p in list(ps):
            if used_at(first_use, p) >= start_last:
                continue
            before = [q for q in order[: order.index(p)] if named[owner[q]][1] not in ("", "head")]
            target = owner[before[-1]] if before else body_idx[0]
            ps.remove(p)
            named[target][2].append(p)
            owner[p] = target
            moved[named[target][0]] += 1
    if moved:
        what = {n.replace("@", "stage/block"): c for n, c in moved.items()}
        warn.append(f"moved {sum(moved.values())} unmatched parameter(s) used early into {what}")
    return [g for g in named if g[2]]


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
