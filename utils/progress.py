"""Progress bars that only a terminal sees.

A bar redraws itself with carriage returns and cursor escapes; in a redirected log (a SLURM
``.out`` file, ``make demo > log``) those pile up as fragments. Here a bar is drawn only when
stderr is a terminal; elsewhere the iterable passes through unchanged, and the per-case and
per-epoch log lines are the record of progress.
"""

from __future__ import annotations

import sys
from typing import Iterable

from tqdm.auto import tqdm


def on_terminal() -> bool:
    """Whether stderr (where bars are drawn) is an interactive terminal."""
    isatty = getattr(sys.stderr, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False


def progress(iterable: Iterable, enabled: bool = True, **kwargs) -> tqdm:
    """``tqdm(iterable, **kwargs)``, drawn only when ``enabled`` and stderr is a terminal (a disabled
    bar iterates and takes ``set_postfix_str`` ... as a no-op)."""
    return tqdm(iterable, disable=not (enabled and on_terminal()), **kwargs)
