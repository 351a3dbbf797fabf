"""`zoo explain`: Grad-CAM (Selvaraju et al. 2017) heat maps of a fine-tuned model's predictions.

The target is found from the backbone's layer groups, for any backbone: the last spatial map that the groups
before the head produce, which is the output of the last group, or of the group before it when the last one
works on pooled features (a pre-logits layer, MobileNetV3's `classifier.0`). A token sequence there (a ViT's
(N, tokens, C)) has no spatial map, and the model is refused in one line.

Grad-CAM is written here (a dozen lines in `_cam`) rather than taken from captum or pytorch-grad-cam: both want
the target module before the forward pass and assume channels-first maps, while zoo finds its target from the
activations of the same forward pass that gives the scores (one forward and one backward per batch) and also
explains channels-last (NHWC) backbones. tests/test_explain.py holds it to captum's `LayerGradCam`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zoo.core.errors import InputError, UsageError
from zoo.report.images import model_input, model_view, overlay

BATCH = 16
MIN_SIDE = 224  # explanations of small inputs are upscaled to this side, so that they can be looked at


@dataclass(frozen=True)
class Target:
    """Where Grad-CAM looks: a module's output, its group and the map's size."""

    module: str
    group: str
    layout: str  # NCHW or NHWC
    size: tuple[int, int]  # (h, w) of the map

    def describe(self) -> str:
        return f"{self.module} (group {self.group}), a {self.size[0]}x{self.size[1]} map"


@dataclass(frozen=True, eq=False)
class Explanation:
    path: str
    predicted: str  # the most probable class
    probability: float
    explained: str  # the class the heat map is for (the predicted one, or --class)
    explained_probability: float
    heat: Any  # (h, w) float32 in [0, 1]
    view: Any  # the PIL image the model saw

    def picture(self, min_side: int = MIN_SIDE):
        """The heat map over the image the model saw, at least `min_side` pixels on its short side."""
        from PIL import Image

        view = self.view
        if min(view.size) < min_side:
            scale = min_side / min(view.size)
            view = view.resize((round(view.width * scale), round(view.height * scale)), Image.Resampling.BICUBIC)
        return overlay(view, self.heat)


def _channels_last():
    import torch

    return torch.channels_last


class Explainer:
    """A run's best checkpoint, ready to explain images; the target is found on the first batch."""

    def __init__(self, run: Path | str):
        from zoo.catalogue.registry import get_registry
        from zoo.model.build import GroupMap
        from zoo.model.checkpoint import load_model, policy_of, preprocess_of

        self.model, ckpt = load_model(run)
        # channels_last: convolutions run 1.4x (resnet18) to 1.75x (lite0) faster on the CPU, with the same maps
        self.model = self.model.to(memory_format=_channels_last())
        self.classes = list(ckpt["classes"])
        self.multi_label = ckpt.get("task") == "multi-label"
        self.pre = preprocess_of(ckpt)
        spec = get_registry().get(ckpt["backbone"])
        cut = policy_of(ckpt).cut
        if cut:  # the model as `--policy cut:GROUP` built it: the groups up to GROUP, then the head
            from zoo.catalogue.backbone import Group

            k = spec.group_names.index(cut) + 1
            spec = dataclasses.replace(spec, groups=(*spec.groups[:k], Group("head", (spec.head,))))
        self.spec = spec
        self.groups = GroupMap(self.model, spec)
        self.target: Target | None = None

    def class_index(self, name: str | None) -> int | None:
        if name is None:
            return None
        if name not in self.classes:
            shown = ", ".join(self.classes[:20]) + (", ..." if len(self.classes) > 20 else "")
            raise UsageError(f"--class {name}: not one of the run's classes ({shown})")
        return self.classes.index(name)

    def views(self, paths: list[Path | str]) -> list:
        """The images as the model sees them (`model_view`); a missing or unreadable file is a one-line error."""
        from zoo.runtime.predictions import read_images

        return read_images(list(paths), lambda path: model_view(path, self.pre))

    def __call__(self, paths: list[str], views: list, chosen: list[int | None] | int | None = None) -> list:
        """One `Explanation` per image (`views` from `views()`), for `chosen`: a class index per image, one for
        all, or None for the predicted class."""
        import numpy as np
        import torch

        per_image = chosen if isinstance(chosen, list) else [chosen] * len(paths)
        out = []
        for start in range(0, len(paths), BATCH):
            part = views[start : start + BATCH]
            x = torch.from_numpy(np.stack([model_input(v, self.pre) for v in part]))
            x = x.contiguous(memory_format=torch.channels_last)
            probs, heat, wanted = self._cam(x, per_image[start : start + BATCH])
            for i, view in enumerate(part):
                top = int(probs[i].argmax())
                out.append(Explanation(str(paths[start + i]), self.classes[top], float(probs[i, top]),
                                       self.classes[wanted[i]], float(probs[i, wanted[i]]), heat[i], view))  # fmt: skip
        return out

    def _cam(self, x, chosen: list[int | None]):
        """(probabilities, heat maps in [0, 1], the class each map is for) of a batch."""
        import torch

        from zoo.model.build import split_outputs

        outputs: list[tuple[str, str | None, Any]] = []  # (module, its group, its output), as modules complete
        reached = []  # set once the head starts: what comes after is not a candidate
        head = self.spec.group_names[-1]

        def record(name: str, group: str | None):
            def hook(_module, _inputs, out) -> None:
                if not reached and torch.is_tensor(out):
                    outputs.append((name, group, out))

            return hook

        hooks = [self.model.get_submodule(self.spec.head).register_forward_pre_hook(lambda *_: reached.append(1))]
        for name, module in self.model.named_modules():
            group = self.groups.of_module(name) if name else head
            if group != head and not name.startswith(self.spec.head + "."):
                hooks.append(module.register_forward_hook(record(name, group)))
        try:
            with torch.enable_grad():
                x = x.requires_grad_(True)  # frozen weights or not, the maps need gradients
                logits = split_outputs(self.model(x))[0].float()
                target, acts = self._choose(outputs)
                probs = torch.sigmoid(logits) if self.multi_label else torch.softmax(logits, 1)
                wanted = [int(probs[i].argmax()) if c is None else c for i, c in enumerate(chosen)]
                score = logits[torch.arange(len(wanted)), torch.tensor(wanted)].sum()
                (grads,) = torch.autograd.grad(score, acts)
        finally:
            for h in hooks:
                h.remove()
        if target.layout == "NHWC":
            acts, grads = acts.permute(0, 3, 1, 2), grads.permute(0, 3, 1, 2)
        weights = grads.mean(dim=(2, 3), keepdim=True)  # each channel's importance: its gradient, pooled
        cam = torch.relu((weights * acts).sum(dim=1)).detach()
        peak = cam.flatten(1).max(dim=1).values.clamp_min(1e-12)[:, None, None]
        return probs.detach().numpy(), (cam / peak).numpy(), wanted

    def _choose(self, outputs: list[tuple[str, str | None, Any]]):
        """The target: scanning back from the head over the outputs of the groups' modules, the first spatial map
        (pooled features are passed over, a token sequence ends the search); then the same map as it reached the
        head, when a module outside the groups changed it after (EfficientNet-Lite's shared activation module)."""
        layout = "NHWC" if self.spec.features_layout == "NHWC" else "NCHW"
        found = None
        for i in range(len(outputs) - 1, -1, -1):
            name, group, out = outputs[i]
            if group is None:
                continue
            if out.dim() == 3:  # tokens: no spatial map to weigh
                break
            if (
                out.dim() == 4
                and (out.shape[1] * out.shape[2] if layout == "NHWC" else out.shape[2] * out.shape[3]) > 1
            ):
                found = i
                break
        if found is None:
            last = self.spec.group_names[-2]
            shape = next((tuple(o.shape) for _, g, o in reversed(outputs) if g is not None), None)
            raise InputError(
                f"{self.spec.name}: Grad-CAM needs a spatial map before the head, and the groups before it "
                f"(the last is '{last}') give {_shape_words(shape)}; zoo explain cannot explain this backbone"
            )
        name, group, out = outputs[found]
        for later, later_group, value in reversed(outputs[found + 1 :]):
            if later_group is None and value.shape == out.shape and value is not out:
                name, out = later, value
                break
        size = (out.shape[1], out.shape[2]) if layout == "NHWC" else (out.shape[2], out.shape[3])
        target = Target(name, group, layout, (int(size[0]), int(size[1])))
        if self.target is None:
            self.target = target
        return target, out


def _shape_words(shape: tuple[int, ...] | None) -> str:
    if shape is None:
        return "no tensor"
    if len(shape) == 3:
        return f"a sequence of {shape[1]} tokens of {shape[2]} features"
    return f"features of shape {list(shape)}, pooled"


def explain(run: Path | str, images: list[Path | str], class_name: str | None = None) -> tuple[Target, list]:
    """Grad-CAM explanations of a run's best checkpoint on image files: (where it looked, one per image).

    Example:
        >>> target, found = explain("runs/resnet18-finetune", ["ant.jpg"])
        >>> found[0].predicted, found[0].picture().save("ant.cam.png")
    """
    explainer = Explainer(run)
    chosen = explainer.class_index(class_name)
    views = explainer.views(images)
    found = explainer([str(p) for p in images], views, chosen)
    return explainer.target, found
