"""`zoo plugin new NAME`: a plugin package that installs, registers a backbone and passes its own test.

The generated package is the smallest complete plugin: pyproject.toml with the
`zoo` entry point, a `register_backbones` hook with one `Backbone` (a small CNN
you replace with your model), its builder, and a pytest that runs
`zoo.testing.check_backbone`. See docs/writing-a-plugin.md.
"""

from __future__ import annotations

import re
from pathlib import Path

from zoo.core.errors import OutputError, UsageError

_PYPROJECT = """\
[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "zoo-{dash}"
version = "0.1.0"
description = "zoo plugin: {name} backbones"
requires-python = ">=3.11"
dependencies = ["zoo-finetune"]

[project.optional-dependencies]
test = ["pytest>=8"]

# the entry point is the whole registration: once installed, `zoo list` shows the backbones
[project.entry-points.zoo]
{module} = "zoo_{module}"

[tool.setuptools]
packages = ["zoo_{module}"]
"""

_INIT = '''\
"""zoo plugin: {name}. Registration is data only (no torch import), so `zoo list` stays fast."""

from __future__ import annotations

from zoo import Backbone, Group, Preprocess, hookimpl


@hookimpl
def register_backbones(register):
    register(
        Backbone(
            name="{name}-cnn",
            family="{module}",
            build="zoo_{module}.build:build",
            head="fc",  # the classifier zoo replaces for your classes (a Linear or a 1x1 Conv2d)
            # input to output, the head last; every parameter in exactly one group
            groups=(
                Group("stem", ("stem",)),
                Group("stage1", ("stage1",)),
                Group("stage2", ("stage2",)),
                Group("head", ("fc",)),
            ),
            description="{name}: a small CNN; replace it with your model",
            preprocess=Preprocess(input_size=(64, 64), crop_pct=1.0),
            # weights=(Weights(tag="mine", url="https://...", sha256="..."),), default_weights="mine",
        )
    )
'''

# {small_cnn}: the source of `small_cnn` below, the one definition of the template model
_BUILD = '''\
"""Build the model; load `weights` (a zoo.Weights) when given."""

from __future__ import annotations


{small_cnn}

def build(spec, weights=None):
    import torch

    model = small_cnn()
    if weights is not None:
        from zoo.catalogue.weights import fetch

        model.load_state_dict(torch.load(fetch(weights), weights_only=True))  # sha256-checked download
    return model
'''

# runs before and after `pip install -e .`: once installed, the entry point has loaded the plugin already
_TEST = """\
from zoo.catalogue.plugins import load_plugins
from zoo.catalogue.registry import build_registry
from zoo.testing import check_backbone

import zoo_{module}


def registry():
    \"\"\"Every installed plugin, and this one added by hand while its entry point is not installed.\"\"\"
    plugins = load_plugins()
    if not plugins.pm.is_registered(zoo_{module}):
        plugins.add(zoo_{module}, "{module}")
    return build_registry(plugins=plugins)


def test_backbone_spec_matches_the_model():
    check_backbone(registry().get("{name}-cnn"))
"""

_README = """\
# zoo-{dash}

A [zoo](https://pypi.org/project/zoo-finetune/) plugin.

```bash
pip install -e '.[test]'    # zoo list now shows {name}-cnn; [test] brings pytest
python -m pytest            # check_backbone on the spec (passes before installing, too)
zoo finetune {name}-cnn data/ --policy freeze:2
```

Describe your model in `zoo_{module}/__init__.py` (head, ordered layer groups,
preprocessing, weights with sha256) and build it in `zoo_{module}/build.py`;
the test runs `zoo.testing.check_backbone` on it.
"""


def small_cnn(widths: tuple[int, int, int] = (16, 32, 64), num_classes: int = 1000):
    """A small CNN, the model to replace: three stride-2 conv blocks (stem, stage1, stage2), pooling, head `fc`."""
    from torch import nn

    def block(cin, cout):
        return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())

    model = nn.Sequential()
    model.add_module("stem", block(3, widths[0]))
    model.add_module("stage1", block(widths[0], widths[1]))
    model.add_module("stage2", block(widths[1], widths[2]))
    model.add_module("pool", nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten()))
    model.add_module("fc", nn.Linear(widths[2], num_classes))
    return model


def small_cnn_source() -> str:
    """The source of `small_cnn`, as the generated build.py holds it (and the tests' tiny backbone)."""
    import inspect

    return inspect.getsource(small_cnn)


def new_plugin(name: str, where: Path | str = ".") -> Path:
    """Write the package `zoo-NAME/` under `where`; refuses to overwrite anything."""
    if not re.fullmatch(r"[a-z][a-z0-9_-]*", name or ""):
        raise UsageError(f"plugin name {name!r}: use lower case letters, digits, '-' and '_', starting with a letter")
    module = name.replace("-", "_")
    dash = name.replace("_", "-")
    root = Path(where).expanduser() / f"zoo-{dash}"
    if root.exists():
        raise OutputError(f"{root}: already exists; choose another name or folder")
    fields = {"name": dash, "module": module, "dash": dash, "small_cnn": small_cnn_source()}
    files = {
        "pyproject.toml": _PYPROJECT,
        "README.md": _README,
        f"zoo_{module}/__init__.py": _INIT,
        f"zoo_{module}/build.py": _BUILD,
        f"tests/test_{module}.py": _TEST,
    }
    for rel, template in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(template.format(**fields), encoding="utf-8")
    return root
