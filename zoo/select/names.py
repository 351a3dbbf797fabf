"""The names `zoo rank` can rank by, without importing numpy (the CLI's help path): the estimates of
`zoo.select.estimators.ESTIMATES`, in their order, then the linear probe (tests/test_rank.py holds them equal)."""

ESTIMATE_NAMES = ("logme", "leep", "nce", "hscore", "gbc", "probe")
DEFAULT_ESTIMATE = "logme"
DEFAULT_LIMIT = 1000
