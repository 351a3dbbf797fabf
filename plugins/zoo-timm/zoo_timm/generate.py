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

The modules: `registry_data` (timm's registry), `probes` (building, forward probes, layouts, zoo's cut),
`groups` (timm's groups made zoo's), `describe` (one architecture), this one (all of them, the command).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
import warnings
from pathlib import Path

import timm
import torch

from zoo_timm.describe import describe
from zoo_timm.groups import DescribeError
from zoo_timm.probes import short
from zoo_timm.registry_data import module_of, registry_data

HERE = Path(__file__).resolve().parent
DATA = HERE / "models.json"

__all__ = ["DATA", "DescribeError", "describe", "describe_all", "dumps", "main", "registry_data"]


KEEP = (
    "name", "module", "default_tag", "tags", "preprocess", "num_params", "head", "aux_heads", "build_kwargs",
    "groups", "features_layout", "min_input_size", "trace_hints", "fx", "error",
)  # fmt: skip


def describe_all(names: list[str], report=None, fx: bool = True) -> tuple[dict, dict]:
    """(the models.json document, diagnostics by architecture) for these architectures; `report(i, arch, record)`
    hears of each. `fx`: also trace each model with zoo's cut."""
    from timm.data import ImageNetInfo

    records = []
    for i, arch in enumerate(names):
        t = time.perf_counter()
        try:
            rec = describe(arch, fx=fx)
        except DescribeError as exc:
            rec = {"name": arch, "module": module_of(arch), "error": str(exc)}
        except Exception as exc:  # a bug here, or zoo's check refusing the spec
            tb = traceback.extract_tb(exc.__traceback__)[-1]
            rec = {
                "name": arch,
                "module": module_of(arch),
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
    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    names = timm.list_models(args.patterns or "")
    t0 = time.perf_counter()

    def report(i, arch, rec):
        if rec.get("error"):
            print(f"[{i + 1}/{len(names)}] {arch}: not described: {rec['error']}", file=sys.stderr, flush=True)
        elif (i + 1) % 50 == 0:
            print(f"[{i + 1}/{len(names)}] {time.perf_counter() - t0:.0f}s", file=sys.stderr, flush=True)

    doc, diagnostics = describe_all(names, report, fx=not args.no_fx)
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
