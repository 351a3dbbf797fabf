"""From samples to batches: the torch datasets, transforms and loaders of a run.

The evaluation transform is `zoo.data.images.preprocess_image` (the same pixels as the
torch-free runtime); training augmentation is torchvision's transforms v2.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from zoo.catalogue.backbone import Preprocess
from zoo.core.errors import UsageError
from zoo.data.images import open_rgb, preprocess_image, shrink
from zoo.data.split import Sample
from zoo.training.config import AUGMENTS, MAX_WORKERS, TRAIN_SIZE_RATIO


class EvalTransform:
    """`zoo.data.images.preprocess_image` as a transform that returns a torch tensor."""

    def __init__(self, pre: Preprocess):
        self.pre = pre

    def __call__(self, img: Image.Image) -> torch.Tensor:
        return torch.from_numpy(preprocess_image(img, self.pre))


def default_workers(device_type: str) -> int:
    """Loader processes when --workers is not given. Images are decoded once into memory, so a loader process
    only crops and flips: on the CPU it takes cores from the model and pipes its tensors back, and in-process
    loading is 1.47x faster here (bench/cpu_defaults.py; distributed CPU ranks too, and no fork of a process
    that runs gloo threads). On a GPU, one per core but one, up to MAX_WORKERS."""
    if device_type == "cpu":
        return 0
    return min(MAX_WORKERS, max(0, (os.cpu_count() or 1) - 1))


def train_size(pre: Preprocess, min_input_size: int, every_group_trains: bool, augment: str, asked: int | None = None):
    """(height, width) of the training crops: `--train-size`, or the default rule (config.TRAIN_SIZE_RATIO of the
    input size, to a multiple of 16, when every group trains from the start; a model that takes one size only,
    a policy with a frozen prefix, or training on unaugmented images keeps the input size)."""
    if augment == "none":
        if asked is not None:
            raise UsageError(f"--train-size {asked}: with --augment none the training images are the evaluation "
                             "crops; use --augment light or strong")  # fmt: skip
        return tuple(pre.input_size)
    fixed = min_input_size >= min(pre.input_size)  # a model that takes its input size only (ViTs, ONNX imports)
    if asked is not None:
        if fixed and (asked, asked) != tuple(pre.input_size):
            h, w = pre.input_size
            raise UsageError(
                f"--train-size {asked}: zoo trains this model at its input size only ({h}x{w}, its smallest)"
            )
        if asked < min_input_size:
            raise UsageError(f"--train-size {asked}: this model takes inputs of at least {min_input_size} pixels")
        return (asked, asked)
    if not every_group_trains or fixed:
        return tuple(pre.input_size)
    return tuple(max(min_input_size, 16 * round(side * TRAIN_SIZE_RATIO / 16)) for side in pre.input_size)


def predates_train_size(resume: dict | None) -> bool:
    """A resumed run that an older zoo started, which trained on crops of the input size: it goes on with them."""
    return resume is not None and "train_size" not in resume.get("config", {})


def build_transform(pre: Preprocess, augment: str = "none", size: tuple[int, int] | None = None):
    """The evaluation transform (`none`), or torchvision v2 train augmentation on crops of `size` (default: the
    input size), from a backbone's preprocessing."""
    if augment not in AUGMENTS:
        raise UsageError(f"--augment {augment}: choose one of {', '.join(AUGMENTS)}")
    if augment == "none":
        return EvalTransform(pre)
    from torchvision.transforms import InterpolationMode, v2

    interpolation = InterpolationMode(pre.interpolation)
    scale = (0.35, 1.0) if augment == "light" else (0.08, 1.0)
    steps = [
        v2.PILToTensor(),
        v2.RandomResizedCrop(list(size or pre.input_size), scale=scale, interpolation=interpolation, antialias=True),
        v2.RandomHorizontalFlip(),
    ]
    if augment == "strong":
        steps.append(v2.TrivialAugmentWide(interpolation=interpolation))
    if pre.channels == 1:
        steps.append(v2.Grayscale(1))
    steps.append(v2.ToDtype(torch.float32, scale=True))
    if pre.channel_order == "BGR":
        steps.append(ToBGR())
    steps.append(v2.Normalize(list(pre.mean), list(pre.std)))
    if augment == "strong":
        steps.append(v2.RandomErasing(p=0.25))
    return v2.Compose(steps)


class ToBGR(torch.nn.Module):
    """RGB -> BGR channel order (a class, not a lambda: loader workers pickle it)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flip(-3)


class ImageDataset(torch.utils.data.Dataset):
    """(tensor, target) pairs, decoding from the in-memory cache when the image is in it.

    The target is the sample's class index, or `target_fn(label)` (multi-label: a multi-hot vector)."""

    def __init__(
        self,
        samples: list[Sample],
        transform,
        decoded: dict[Path, Image.Image] | None = None,
        min_short_side: int = 256,
        target_fn=None,
    ):
        self.samples = samples
        self.transform = transform
        self.decoded = decoded or {}
        self.min_short_side = min_short_side
        self.target_fn = target_fn

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        sample = self.samples[index]
        img = self.decoded.get(sample.path)
        if img is None:
            img = shrink(open_rgb(sample.path, self.min_short_side), self.min_short_side)
        return self.transform(img), self.target_fn(sample.label) if self.target_fn else sample.label

    def __getitems__(self, indices: list[int]) -> list:
        """A batch at once (the DataLoader asks for it so): the evaluation transform, which draws no random numbers,
        runs on a thread per core (Pillow's resize and numpy's arithmetic release the GIL; 1.7x faster on 2 cores
        for the frozen-prefix cache and validation). Augmentations stay in order on this thread: their random
        draws are what a resumed run repeats."""
        if len(indices) < 2 or not isinstance(self.transform, EvalTransform):
            return [self[i] for i in indices]
        return list(_transform_pool().map(self.__getitem__, indices))


_POOL: list = []


def close_transform_pool() -> None:
    """Join the evaluation transforms' threads (idle between batches). A command calls it as it ends: live
    non-daemon threads keep a process from leaving at once (`zoo.cli.leave`); the next batch makes a new pool."""
    while _POOL:
        _POOL.pop().shutdown(wait=True)


def _transform_pool():
    """One thread pool for the evaluation transforms of the process (made on first use, never per batch)."""
    if not _POOL:
        from concurrent.futures import ThreadPoolExecutor

        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        _POOL.append(ThreadPoolExecutor(max(1, min(8, cpus)), thread_name_prefix="zoo-transform"))
    return _POOL[0]


class BalancedSampler(torch.utils.data.Sampler):
    """`--balance sampler`: draws with replacement, in proportion to `weights`; the same draws on every rank for an
    epoch (seeded by seed and epoch, so a resumed run draws what it would have), each rank taking its share."""

    def __init__(self, weights: torch.Tensor, world: int = 1, rank: int = 0, seed: int = 0, epoch: int = 0):
        self.weights, self.world, self.rank, self.seed, self.epoch = weights, world, rank, seed, epoch
        self.per_rank = -(-len(weights) // world)

    def __iter__(self):
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        draws = torch.multinomial(self.weights, self.per_rank * self.world, replacement=True, generator=gen)
        return iter(draws[self.rank :: self.world].tolist())

    def __len__(self) -> int:
        return self.per_rank


def _seed_worker(worker_id: int) -> None:
    random.seed(torch.initial_seed() % 2**32)


@dataclass
class Loaders:
    """Makes the loaders of one run: its preprocessing, decoded images, batch, workers and place in a job."""

    pre: Preprocess
    decoded: dict
    short_side: int
    batch_size: int  # per rank
    workers: int
    pin_memory: bool = False
    world: int = 1
    rank: int = 0
    seed: int = 0
    target_fn: object = None  # label -> target (multi-label: `zoo.training.tasks.MultiHot`)
    train_size: tuple[int, int] | None = None  # of augmented crops (default: the input size)

    def loader(
        self,
        samples: list[Sample],
        augment: str = "none",
        shuffle: bool = False,
        generator: torch.Generator | None = None,
        epoch: int | None = None,
        weights: torch.Tensor | None = None,
    ) -> torch.utils.data.DataLoader:
        """Batches of `samples`. With `weights` (and `epoch`): a class-balanced draw (`BalancedSampler`). With
        `epoch` in a distributed run: this rank's DistributedSampler shard, padded so every rank takes the same
        number of steps; otherwise the samples as given."""
        transform = build_transform(self.pre, augment, self.train_size)
        dataset = ImageDataset(samples, transform, self.decoded, self.short_side, self.target_fn)
        sampler = None
        if weights is not None:
            sampler = BalancedSampler(weights, self.world, self.rank, self.seed, epoch or 0)
            shuffle = False
        elif self.world > 1 and epoch is not None:
            sampler = torch.utils.data.DistributedSampler(
                dataset, self.world, self.rank, shuffle=shuffle, seed=self.seed
            )
            sampler.set_epoch(epoch)
        return torch.utils.data.DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle and sampler is None,
            sampler=sampler,
            num_workers=self.workers,
            pin_memory=self.pin_memory,
            generator=generator,
            persistent_workers=False,
            worker_init_fn=_seed_worker if self.workers else None,
            # forking a process whose gloo/NCCL threads hold locks can deadlock the child: start workers cleanly
            multiprocessing_context="forkserver" if self.world > 1 and self.workers else None,
        )
