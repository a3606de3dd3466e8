"""The application layer: command line, whole-volume evaluation, training runs.

It composes the role packages (``attacks``, ``networks``, ``data``) into the jobs the
three entry scripts run; ``utils`` below them imports none of these.
"""
