"""Run folders of the evaluation scripts: create, reuse for a resume, or refuse to mix runs."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from typing import Any, Mapping

from utils import distributed as dist_utils
from utils.errors import UserError
from utils.io import read_json, remove_stale_temporaries, write_json

RUN_FILES = ("results.json", "per_case.csv", "args.json", "log.out")
RUN_FOLDERS = ("cases", "figures", "imagesTsClean", "labelsTsClean", "imagesTsAdv",
               "imagesTrClean", "labelsTrClean", "imagesTrAdv")
LOCK_FILE = ".lock"

logger = logging.getLogger(__name__)


def _canonical(value: Any) -> Any:
    return os.path.realpath(os.path.expanduser(value)) if isinstance(value, str) and value else value


def changed_settings(previous: Mapping, now: Mapping, runtime_keys, path_keys=frozenset(),
                     defaults: Mapping = None) -> list[str]:
    """Keys (outside ``runtime_keys``) whose recorded values differ between two runs; values
    under ``path_keys`` are compared as canonical paths (a trailing slash or a relative path
    to the same place is no difference). A key one record lacks (a flag added since that
    run was made) counts as its default from ``defaults``."""
    defaults = defaults or {}

    def value(record: Mapping, key: str) -> Any:
        found = record.get(key, defaults.get(key))
        return _canonical(found) if key in path_keys else found

    return sorted(k for k in set(previous) | set(now) if k not in runtime_keys and value(previous, k) != value(now, k))


def holds_finished_cases(run_dir: str) -> bool:
    """Whether ``run_dir`` holds a finished case's record or a results file (work a rerun with
    other settings must not mix with); a folder left by a start that failed holds neither."""
    cases = os.path.join(run_dir, "cases")
    finished = os.path.isdir(cases) and any(name.endswith(".json") for name in os.listdir(cases))
    return finished or os.path.exists(os.path.join(run_dir, "results.json"))


@contextlib.contextmanager
def run_lock(run_dir: str | None):
    """Hold an exclusive lock on ``run_dir`` for the block (rank 0 of a sharded run; no-op for ``None``).

    Raises:
        UserError: another process holds it (two runs writing one folder would both do all
            the work and interleave their files).
    """
    import fcntl

    if run_dir is None or not dist_utils.is_main_process():
        yield
        return
    os.makedirs(run_dir, exist_ok=True)
    fd = os.open(os.path.join(run_dir, LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise UserError(f"another run is writing to {run_dir} right now; wait for it to finish (its cases are "
                            "then skipped here) or choose another output folder") from None
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def prepare_run_dir(run_dir: str, record: Mapping, runtime_keys, overwrite: bool, path_keys=frozenset(),
                    defaults: Mapping = None, folder_flag: str = "") -> None:
    """Create or reuse a run folder: never silently mix two different runs.

    Call it under :func:`run_lock`. An existing folder
    whose ``args.json`` records other numbers-changing settings is an error unless
    ``overwrite`` or the folder holds no finished case (:func:`holds_finished_cases`: a
    failed start never blocks the corrected command); with ``overwrite`` only the files this tool writes are removed. Anything
    else in the folder is left alone. Temporary files of a killed write are removed, then
    ``args.json`` is written with ``record`` (the run's resolved arguments).

    Args:
        run_dir: the run folder.
        record: the run's arguments as recorded in ``args.json``.
        runtime_keys: keys of ``record`` that do not change a run's numbers.
        overwrite: start the folder afresh.
        path_keys: keys of ``record`` holding paths (compared canonically).
        defaults: each flag's default, for keys an older ``args.json`` lacks.
        folder_flag: the flag that chooses the folder, named in the refusal.

    Raises:
        UserError: the folder holds an unreadable ``args.json``, or holds a run
            with other settings and ``overwrite`` is off.
    """
    args_file = os.path.join(run_dir, "args.json")
    if os.path.isdir(run_dir) and overwrite:
        if dist_utils.is_main_process():
            for name in RUN_FOLDERS:
                shutil.rmtree(os.path.join(run_dir, name), ignore_errors=True)
            for name in RUN_FILES:
                if os.path.exists(os.path.join(run_dir, name)):
                    os.remove(os.path.join(run_dir, name))
        dist_utils.barrier()
    elif os.path.exists(args_file):
        try:
            previous = read_json(args_file)
        except (OSError, ValueError) as err:
            raise UserError(f"{args_file} is unreadable ({err}); it records which settings the finished cases in "
                            "that folder used: restore it, or choose another output folder") from None
        changed = changed_settings(previous, record, runtime_keys, path_keys, defaults)
        if changed and not holds_finished_cases(run_dir):
            # a start that failed before any case was finished: nothing to protect
            logger.info("run folder %s holds no finished case; its settings are replaced (%s)", run_dir,
                        ", ".join(changed[:5]))
        elif changed:
            details = ", ".join(f"{k}: {previous.get(k)!r} -> {record.get(k)!r}" for k in changed[:5])
            raise UserError(
                f"run folder {run_dir} holds a run with other settings ({details}); choose another output folder "
                f"to keep it{f' (with {folder_flag})' if folder_flag else ''} (or, to discard its finished cases, "
                "pass --overwrite)"
            )
    if dist_utils.is_main_process():
        for folder in ("", *RUN_FOLDERS):  # what a killed write left behind
            remove_stale_temporaries(os.path.join(run_dir, folder))
        os.makedirs(os.path.join(run_dir, "cases"), exist_ok=True)
        write_json(args_file, dict(record))
    dist_utils.barrier()
