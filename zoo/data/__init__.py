"""Labelled images: scanning a folder or a manifest into a split, decoding, and the images a check runs on.

The train/val/test split (`split`), manifests, image decoding and the evaluation preprocessing in numpy,
evaluation data, check images, and class imbalance.

Imports zoo.catalogue and zoo.core; no torch at import time.
"""
