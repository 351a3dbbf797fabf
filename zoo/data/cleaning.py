"""What `zoo audit` finds, applied to a scanned split before training: images whose pixels leak from one split into
another are counted (the scan hashed every decoded image, so this costs a dictionary lookup per image), and the
files an audit listed can be left out. Nothing here decodes an image or imports torch."""

from __future__ import annotations

import csv
import dataclasses
import logging
import os
from pathlib import Path

from zoo.core.errors import DataError
from zoo.data.split import DataSplit

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")  # the order in which a copy counts as the leak: a val copy of train, ...


def cross_split_duplicates(split: DataSplit) -> int:
    """Images whose decoded pixels equal those of an image in an earlier split (train, val, test in that order):
    the leaks that make val/test figures look better than they are."""
    earlier: set[bytes] = set()
    leaks = 0
    for which in SPLITS:
        digests = [d for s in split.samples(which) if (d := split.digests.get(s.path)) is not None]
        leaks += sum(d in earlier for d in digests)
        earlier.update(digests)
    return leaks


def check_leaks(split: DataSplit, data: str | Path, strict: bool) -> int:
    """Warn (or, `strict`, raise a DataError) when val/test images are exact copies of earlier splits' images."""
    leaks = cross_split_duplicates(split)
    if leaks:
        message = (
            f"{leaks} image(s) of val/test have the same pixels as an image of an earlier split (train, then val), "
            f"which inflates their figures; `zoo audit {data}` lists them and `--exclude-from audit.csv` leaves "
            "them out"
        )
        if strict:
            raise DataError(f"{message} (--strict-data)")
        log.warning("%s; --strict-data makes this an error", message)
    return leaks


def read_listing(listing: Path) -> set[str]:
    """The real paths of the files a CSV names in its `path` column (absolute, or relative to the CSV's folder)."""
    try:
        with open(listing, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            if reader.fieldnames is None or "path" not in reader.fieldnames:
                raise DataError(f"--exclude-from {listing}: no 'path' column (give the audit.csv of `zoo audit`)")
            return {os.path.realpath(listing.parent / row["path"]) for row in reader if row.get("path")}
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"--exclude-from {listing}: cannot read it ({exc})") from None


def exclude_listed(split: DataSplit, listing: Path) -> DataSplit:
    """A copy of `split` without the files `listing` names (`zoo audit`'s audit.csv, edited or not). A listing that
    names none of the data's files, or whose files are all of a class's train images or of the val split, is a
    DataError: it was written for other data, or leaves nothing to train or validate on."""
    listed = read_listing(listing)
    parts = {w: [s for s in split.samples(w) if os.path.realpath(s.path) not in listed] for w in SPLITS}
    dropped = sum(len(split.samples(w)) - len(kept) for w, kept in parts.items())
    if listed and not dropped:
        raise DataError(f"--exclude-from {listing}: none of its {len(listed)} file(s) is in the data")
    split = dataclasses.replace(split, **parts)
    empty = [c for c, n in split.counts("train").items() if n == 0 and not split.multi_label]
    if empty or not split.train or not split.val:
        where = f"class '{empty[0]}' in train" if empty else "train" if not split.train else "the val split"
        raise DataError(f"--exclude-from {listing}: leaving its files out empties {where}; edit it to keep some")
    if dropped:
        log.warning("left out %d image(s) listed in %s", dropped, listing)
    return split
