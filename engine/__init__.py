"""The evaluation engine: the command line, whole-volume evaluation jobs and their run folders.

It composes the role packages (``attacks``, ``networks``, ``data``) and the training package into the
jobs the three entry scripts run; the studies (:mod:`studies`) sit above it.
"""
