"""A backbone as a torch model: built with its new head, cut at a group boundary, frozen, saved.

Building (`build`: weights, new head, the parameter -> group map), cutting with torch.fx, freezing,
checkpoints, and `zoo info`.

Imports zoo.catalogue and zoo.core.
"""
