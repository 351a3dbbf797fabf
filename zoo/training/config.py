"""What a fine-tuning run can be asked to do: its options, their choices and defaults, checked before anything runs.

`TrainConfig` is every option of `zoo finetune` (saved as the run's config.json) and
`LaunchConfig` the torchrun options; each field is declared once, with its help
(`zoo.core.options.option`), and the CLI builds its flags from them. Nothing here imports torch.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zoo.catalogue.policies import BUILTIN_NAMES as POLICIES
from zoo.core.errors import UsageError
from zoo.core.metrics import SELECTABLE
from zoo.core.options import APPLY, option
from zoo.data.balance import MODES as BALANCE_MODES
from zoo.data.balance import SKEW_LIMIT


@dataclass(frozen=True)
class OptimizerDefaults:
    """What an optimizer gets when --lr and --weight-decay are not given."""

    head_lr: float  # the LR when only the head trains
    body_lr: float  # the LR when more than the head trains
    weight_decay: float


# the optimizers `--optimizer` can name, and their defaults: the one table of both. AdamW's head-only LR is 1e-2:
# a new linear head on frozen features, 10 epochs, ended under a converged linear probe at 1e-3 on multi-label
# mosaics and 8 points lower on digits than at 1e-2, which kept ants/bees' 0.954 (bench/head_lr.py,
# bench/multilabel_fe.py; docs/finetuning.md, docs/data.md). zoo tune's studies chose 3e-3 to 6e-2 there.
OPTIMIZER_DEFAULTS = {"adamw": OptimizerDefaults(1e-2, 3e-4, 0.05), "sgd": OptimizerDefaults(1e-2, 1e-2, 1e-4)}
OPTIMIZERS = tuple(OPTIMIZER_DEFAULTS)
SCHEDULES = ("cosine", "step")
AUGMENTS = ("none", "light", "strong")
CACHE_MODES = ("auto", "memory", "off")
CACHE_ENGINES = ("auto", "torch", "onnxruntime")
AMP_MODES = ("auto", "bf16", "fp16", "off")
# full fine-tuning trains on crops this much smaller than the eval input (torchvision's 176-for-224 recipe, FixRes):
# measured on ants/bees, 160 reached the tutorial's best in 3 of 3 seeds at 2.0x the img/s of 224 (docs/benchmarks.md)
TRAIN_SIZE_RATIO = 0.72
CPU_BATCH = 16  # measured fastest per image on the CPU here (docs/benchmarks.md)
GPU_BATCH = 64
MAX_WORKERS = 4
_ADAMW, _SGD = OPTIMIZER_DEFAULTS["adamw"], OPTIMIZER_DEFAULTS["sgd"]  # for the help texts


@dataclass
class TrainConfig:
    """Every option of `zoo finetune`; saved as config.json so a run can be resumed or repeated."""

    backbone: str = option("", "Backbone name or alias (`zoo list`).", cli=False)
    data: str = option(
        "", "Image folder (DATA/<class>/*.jpg, or DATA/train + DATA/val [+ DATA/test]) or a CSV/TSV manifest.",
        cli=False,
    )  # fmt: skip
    labels: str | None = option(
        None, "A CSV/TSV manifest of the images in DATA (a folder): a path and a label column, optionally a split."
    )
    path_column: str | None = option(None, "Manifest: the column of image paths (header name or 1-based number) "
                                     "[default: detected].")  # fmt: skip
    label_column: str | None = option(None, "Manifest: the column of labels [default: detected].")
    split_column: str | None = option(
        None,
        "Manifest: the column of train/val/test [default: detected; without one, the rows are split into train "
        "and val].",
    )
    label_sep: str | None = option(
        None, "Manifest: what separates several labels in one cell [default: detected: | ; , or whitespace]."
    )
    multi_label: bool | None = option(
        None,
        "Multi-label: sigmoid outputs, one threshold per label tuned on val, an image may get several labels or "
        "none [default: multi-label when a manifest cell holds several labels].",
    )
    exclude_from: str | None = option(
        None, "Leave out the images this CSV lists in its path column (`zoo audit`'s audit.csv, edited or not)."
    )
    strict_data: bool = option(
        False,
        "Stop, instead of warning, when an image has the same pixels as an image of another split (leakage).",
        on_resume=APPLY,
    )
    balance: str = option(
        "auto",
        f"Class imbalance: auto, {', '.join(BALANCE_MODES)} (loss: class-weighted loss; sampler: class-balanced "
        f"sampling) [auto: loss when the largest class has over {SKEW_LIMIT}x the images of the smallest].",
    )
    select_by: str = option(
        "auto",
        f"Val metric that picks the best epoch: auto, {', '.join(SELECTABLE)} [auto: map for multi-label, "
        "balanced_acc when the train split is skewed, else acc].",
    )
    policy: str = option(
        "finetune",
        f"Freeze policy: {', '.join(POLICIES)}, or a named one (`zoo policies`).",
    )
    weights: str = option("default", "Weights tag, 'none' for random init, or a local file.")
    epochs: int = option(10, "Epochs to train (with --resume: the total to reach).", on_resume=APPLY)
    batch_size: int | None = option(
        None,
        "Images per batch over all workers, each taking an equal share (--accum-steps batches make one optimizer "
        f"step) [default: {CPU_BATCH} per worker on the CPU, {GPU_BATCH} per worker on a GPU].",
    )
    lr: str | None = option(
        None,
        f"Base learning rate, or 'auto' (run the LR range test first, as `zoo lr-find`, and use its suggestion) "
        f"[default: {_ADAMW.head_lr:g} (adamw) or {_SGD.head_lr:g} (sgd) when only the head trains, else "
        f"{_ADAMW.body_lr:g} or {_SGD.body_lr:g}].",
    )
    lr_find_steps: int = option(100, "--lr auto: steps of the LR range test (LR from 1e-7 to 1, exponentially).")
    optimizer: str = option("adamw", f"Optimizer: {' or '.join(OPTIMIZERS)} (SGD: Nesterov momentum).")
    momentum: float = option(0.9, "SGD momentum.")
    weight_decay: float | None = option(
        None,
        f"Weight decay, never on biases and norms [default: {_ADAMW.weight_decay:g} (adamw) or "
        f"{_SGD.weight_decay:g} (sgd)].",
    )
    schedule: str = option("cosine", f"LR schedule: {' or '.join(SCHEDULES)} (cosine with linear warmup).")
    warmup_epochs: float = option(1.0, "Linear warmup length, in epochs.")
    step_size: int = option(7, "step schedule: epochs between LR drops.")
    gamma: float = option(0.1, "step schedule: LR multiplier at each drop.")
    label_smoothing: float = option(0.1, "Label smoothing of the loss.")
    mixup: float | None = option(
        None, "Mixup: blend pairs of training images and their labels, weight ~ Beta(A, A) (0.2 is common)."
    )
    cutmix: float | None = option(
        None, "CutMix: paste a box of one training image into another, labels mixed by area, Beta(A, A) (1.0)."
    )
    ema: float | None = option(
        None,
        "Keep an exponential moving average of the weights with this decay (--ema alone: 0.999, the usual "
        "choice; the decay is warmed up as min(DECAY, (1+n)/(10+n)) after n steps, so a run of a few hundred "
        "steps averages over about its last ninth and 0.999's ~1000-step window only takes over after ~9000); "
        "the averaged weights are evaluated, kept as best and exported.",
        metavar="[DECAY]",
        flag_value=0.999,
    )
    clip_grad: float | None = option(
        None, "Clip the gradients' total L2 norm (over every trainable parameter) to this value [default: no clip]."
    )
    accum_steps: int = option(
        1,
        "Accumulate gradients over N batches before each optimizer step: the effective batch is N x --batch-size "
        "(BatchNorm still sees one batch at a time).",
    )
    patience: int | None = option(
        None, "Stop after N epochs without a better val metric (--select-by).", on_resume=APPLY
    )
    augment: str = option(
        "auto",
        f"Train augmentation: auto, {', '.join(AUGMENTS)} "
        "[auto: none when a fixed frozen prefix can be cached, else light].",
    )
    train_size: int | None = option(
        None,
        f"Side of the training crops, in pixels (evaluation, checks and export keep the model's input size) "
        f"[default: for policies that train every group from the start, {TRAIN_SIZE_RATIO:g} x the input size, to a "
        "multiple of 16 and at least the model's smallest input (160 for 224), as torchvision's and timm's recipes "
        "train below the test size; else the input size].",
    )
    cache: str = option(
        "auto",
        "Frozen-prefix activation cache: auto (kept in ZOO_HOME/cache for later runs on the same data), memory "
        "(this run only) or off.",
    )
    cache_augmented: int = option(0, "Cache K augmented copies of the train set (with --augment light/strong).")
    cache_engine: str = option("auto", f"Engine for the frozen prefix: {', '.join(CACHE_ENGINES)}.", on_resume=APPLY)
    train_bn: bool = option(False, "Let BatchNorm in frozen groups update its statistics.")
    val_fraction: float = option(0.2, "Share of each class held out when DATA has no val/.")
    seed: int = option(0, "Random seed.")
    deterministic: bool = option(False, "Deterministic algorithms (slower).")
    device: str = option("auto", "auto, cpu, cuda, cuda:N or mps.", on_resume=APPLY)
    amp: str = option(
        "auto",
        f"Mixed precision for training steps: {', '.join(AMP_MODES)} [auto: bf16 or fp16 on CUDA; on the CPU bf16 "
        "where it has native bf16 instructions (AVX512-BF16 or AMX), else float32].",
    )
    channels_last: bool | None = option(None, "channels_last memory format [default: on, except on MPS].")
    workers: int | None = option(
        None,
        f"Data-loading worker processes [default: on CUDA min({MAX_WORKERS}, CPUs - 1); on the CPU 0, in-process: "
        "measured faster].",
        on_resume=APPLY,
    )
    sync_bn: bool = option(False, "Distributed on CUDA: SyncBatchNorm over the global batch.")
    dist_timeout: float = option(300.0, "Distributed: seconds to wait for another rank.", on_resume=APPLY)
    out: str = option("runs", "Folder that holds run folders.")
    name: str | None = option(None, "Run folder name [default: BACKBONE-POLICY].")
    report: bool = option(
        True, "Write RUN/report.html at the end of the run (`zoo report RUN` writes it again later).",
        on_resume=APPLY, negatable=True,
    )  # fmt: skip
    trial: bool = option(
        False,
        "A trial of `zoo tune`: the run folder keeps config.json, metrics.csv and summary.json only (no checkpoints "
        "or pictures), and the test split is left for the best configuration's run.",
        cli=False,
    )
    ranking: dict[str, Any] | None = option(  # noqa: RUF009 (its default is None; the field is never shared)
        None, "`zoo finetune auto`: the ranking that chose the backbone (zoo rank's ranking.json).", cli=False
    )

    def __post_init__(self) -> None:
        if isinstance(self.lr, str) and self.lr != "auto":  # from the command line: a number or 'auto'
            try:
                self.lr = float(self.lr)
            except ValueError:
                raise UsageError(f"--lr {self.lr}: a number > 0, or 'auto'") from None

    def check(self) -> None:
        """Refuse every value no run can use, before anything is built or written."""

        def choose(flag: str, value: Any, allowed) -> None:
            if value not in allowed:
                raise UsageError(f"--{flag} {value}: choose one of {', '.join(map(str, allowed))}")

        choose("optimizer", self.optimizer, OPTIMIZERS)
        choose("schedule", self.schedule, SCHEDULES)
        choose("amp", self.amp, AMP_MODES)
        choose("cache", self.cache, CACHE_MODES)
        choose("cache-engine", self.cache_engine, CACHE_ENGINES)
        choose("augment", self.augment, ("auto", *AUGMENTS))
        choose("balance", self.balance, ("auto", *BALANCE_MODES))
        choose("select-by", self.select_by, ("auto", *SELECTABLE))
        if self.label_sep == "":
            raise UsageError("--label-sep '': give the character that separates labels in a cell (e.g. '|')")
        for flag, value, low in (
            ("epochs", self.epochs, 1),
            ("batch-size", self.batch_size, 1),
            ("cache-augmented", self.cache_augmented, 0),
            ("step-size", self.step_size, 1),
            ("patience", self.patience, 1),
            ("workers", self.workers, 0),
            ("accum-steps", self.accum_steps, 1),
            ("lr-find-steps", self.lr_find_steps, 3),
            ("train-size", self.train_size, 16),
        ):
            if value is not None and value < low:
                raise UsageError(f"--{flag} {value}: must be >= {low}")
        for flag, value, low, inclusive in (
            ("lr", None if self.lr == "auto" else self.lr, 0.0, False),
            ("weight-decay", self.weight_decay, 0.0, True),
            ("warmup-epochs", self.warmup_epochs, 0.0, True),
            ("gamma", self.gamma, 0.0, False),
            ("dist-timeout", self.dist_timeout, 0.0, False),
            ("clip-grad", self.clip_grad, 0.0, False),
            ("mixup", self.mixup, 0.0, False),
            ("cutmix", self.cutmix, 0.0, False),
        ):
            if value is None:
                continue
            if not math.isfinite(value) or value < low or (value == low and not inclusive):
                raise UsageError(f"--{flag} {value}: must be a finite number {'>=' if inclusive else '>'} {low:g}")
        if self.schedule == "cosine" and self.warmup_epochs > self.epochs:
            raise UsageError(
                f"--warmup-epochs {self.warmup_epochs:g}: longer than the run (--epochs {self.epochs}), so the LR "
                "would never reach its base value; use at most --epochs"
            )
        if not 0 <= self.momentum < 1:  # also refuses NaN
            raise UsageError(f"--momentum {self.momentum}: must be in [0, 1)")
        if not 0 <= self.label_smoothing < 1:
            raise UsageError(f"--label-smoothing {self.label_smoothing}: must be in [0, 1)")
        if not 0 < self.val_fraction < 1:
            raise UsageError(f"--val-fraction {self.val_fraction}: must be between 0 and 1")
        if not self.backbone or not self.data:
            raise UsageError("zoo finetune needs BACKBONE and DATA (or --resume RUN_DIR)")
        if self.exclude_from is not None and not Path(self.exclude_from).expanduser().is_file():
            raise UsageError(f"--exclude-from {self.exclude_from}: no such file (give the audit.csv of `zoo audit`)")

    def check_distributed(self, world: int, device_type: str) -> None:
        """What a run on `world` workers needs of its options: the launcher checks before it starts any worker,
        and each worker (also under a plain torchrun) checks again."""
        if world == 1:
            return
        if device_type not in ("cuda", "cpu"):
            raise UsageError(f"--device {self.device}: distributed training runs on CUDA (NCCL) or the CPU (gloo)")
        if self.batch_size is not None and self.batch_size % world:
            raise UsageError(
                f"--batch-size {self.batch_size}: the global batch must divide evenly over {world} workers"
            )
        if self.sync_bn and device_type != "cuda":
            raise UsageError("--sync-bn: SyncBatchNorm needs CUDA (NCCL); on the CPU leave it off")

    @classmethod
    def from_saved(cls, saved: dict[str, Any]) -> TrainConfig:
        """A config as stored in a run (keys of other zoo versions dropped)."""
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in saved.items() if k in known})


RESUMABLE = {f.name for f in dataclasses.fields(TrainConfig) if f.metadata.get("on_resume") == APPLY}
MANIFEST_OPTIONS = ("labels", "path_column", "label_column", "split_column", "label_sep", "multi_label")


@dataclass
class LaunchConfig:
    """The torchrun options of `zoo finetune`: how many workers, on how many machines, meeting where."""

    nproc_per_node: int = option(
        1, "Distributed: worker processes on this machine (torchrun; DDP, gloo/NCCL).", on_resume=APPLY
    )
    nnodes: int = option(1, "Distributed: machines in the job.", on_resume=APPLY)
    node_rank: int = option(0, "Distributed, static rendezvous: this machine's index.", on_resume=APPLY)
    master_addr: str = option("127.0.0.1", "Distributed, static rendezvous: node 0's address.", on_resume=APPLY)
    master_port: int | None = option(None, "Distributed, static rendezvous: node 0's port.", on_resume=APPLY)
    rdzv_endpoint: str | None = option(None, "Distributed: c10d rendezvous HOST:PORT.", on_resume=APPLY)
    rdzv_id: str = option("zoo", "Distributed: c10d rendezvous id.", cli=False)

    @property
    def wanted(self) -> bool:
        return self.nproc_per_node > 1 or self.nnodes > 1

    @property
    def world(self) -> int:
        return self.nproc_per_node * self.nnodes

    def check(self) -> None:
        if self.nproc_per_node < 1:
            raise UsageError(f"--nproc-per-node {self.nproc_per_node}: must be >= 1")
        if self.nnodes < 1:
            raise UsageError(f"--nnodes {self.nnodes}: must be >= 1")
        if not 0 <= self.node_rank < self.nnodes:
            raise UsageError(f"--node-rank {self.node_rank}: must be in 0..{self.nnodes - 1}")
        if self.master_port is not None and not 0 < self.master_port < 65536:
            raise UsageError(f"--master-port {self.master_port}: a TCP port, 1 to 65535")
        if self.nnodes > 1 and not self.rdzv_endpoint and self.master_port is None:
            raise UsageError(
                "--nnodes > 1 needs a rendezvous: --rdzv-endpoint HOST:PORT (c10d), or --master-addr HOST "
                "--master-port PORT with --node-rank on each node"
            )

    def torchrun_args(self) -> list[str]:
        # no restarts: a failure stops the job; survivors get SIGTERM, then SIGKILL 5 s later (not torchrun's 30 s)
        args = [
            f"--nproc-per-node={self.nproc_per_node}",
            f"--nnodes={self.nnodes}",
            "--max-restarts=0",
            "--shutdown-timeout=5",
        ]
        if self.rdzv_endpoint:
            args += ["--rdzv-backend=c10d", f"--rdzv-endpoint={self.rdzv_endpoint}", f"--rdzv-id={self.rdzv_id}"]
        elif self.nnodes == 1 and self.master_port is None:
            args += ["--standalone"]  # a free port on this machine
        else:
            args += [
                f"--node-rank={self.node_rank}",
                f"--master-addr={self.master_addr}",
                f"--master-port={self.master_port}",
            ]
        return args
