"""The evaluation engine: the command line (flags, checks, typed jobs), whole-volume evaluation jobs, reports.

It composes the role packages (``attacks``, ``networks``, ``data``) and the training package into the
jobs the three entry scripts run; the studies (:mod:`studies`) sit above it.
"""
