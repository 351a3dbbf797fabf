"""A fine-tuning run: its configuration, the loop, and everything the loop uses.

Config, the trainer and its launch (torchrun, DDP), device and precision, optimizer and schedule, the
frozen-prefix cache, EMA, mixing, the LR finder, the run folder and its records, tasks, loaders, plots,
`zoo evaluate`, and `zoo advise` (which `--policy auto` runs inside a run: docs/architecture.md).

Imports zoo.report, zoo.model, zoo.data, zoo.runtime, zoo.catalogue and zoo.core; never zoo.export or zoo.serve.
"""
