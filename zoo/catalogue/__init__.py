"""What is there to choose from: backbones, the plugins that register them, and freeze policies.

The `Backbone` spec, the hooks and plugin loading, the registry (registry.toml, aliases, overrides),
policies as data, run events, pretrained weights (finding, downloading, checking), and `zoo plugin new`.

Imports zoo.core; no torch at import time, so `zoo list` stays fast.
"""
