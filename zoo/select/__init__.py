"""Choosing before and around training: which backbone (`zoo rank`: transferability estimates over one forward
pass), which hyperparameters (`zoo tune`: Optuna trials that share one activation cache).

The estimates (LogME, LEEP, NCE, H-score, GBC) and the linear probe of `zoo advise` score each candidate's
pretrained features on the data; the features come from the frozen-prefix machinery and are cached per
candidate, weights and data fingerprint.

Imports zoo.training, zoo.model, zoo.data, zoo.runtime, zoo.catalogue and zoo.core; never zoo.export or zoo.serve.
"""
