"""Run folders of the evaluation scripts: create, reuse for a resume, or refuse to mix runs."""

from __future__ import annotations

import os
import shutil
from typing import Mapping

from utils import distributed as dist_utils
from utils.errors import UserError
from utils.io import read_json, remove_stale_temporaries, write_json

RUN_FILES = ("results.json", "per_case.csv", "args.json", "log.out")
RUN_FOLDERS = ("cases", "figures", "imagesTsClean", "labelsTsClean", "imagesTsAdv",
               "imagesTrClean", "labelsTrClean", "imagesTrAdv")


def changed_settings(previous: Mapping, now: Mapping, runtime_keys) -> list[str]:
    """Keys (outside ``runtime_keys``) whose recorded values differ between two runs."""
    return sorted(k for k in set(previous) | set(now) if k not in runtime_keys and previous.get(k) != now.get(k))


def prepare_run_dir(run_dir: str, record: Mapping, runtime_keys, overwrite: bool) -> None:
    """Create or reuse a run folder: never silently mix two different runs.

    An existing folder whose ``args.json`` records other numbers-changing settings is an
    error unless ``overwrite``; with ``overwrite`` only the files this tool writes are
    removed. Anything else in the folder is left alone. Temporary files of a killed
    write are removed, then ``args.json`` is written with ``record`` (the run's resolved
    arguments).

    Args:
        run_dir: the run folder.
        record: the run's arguments as recorded in ``args.json``.
        runtime_keys: keys of ``record`` that do not change a run's numbers.
        overwrite: start the folder afresh.

    Raises:
        UserError: the folder holds a run with other settings and ``overwrite`` is off.
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
        previous = read_json(args_file)
        changed = changed_settings(previous, record, runtime_keys)
        if changed:
            details = ", ".join(f"{k}: {previous.get(k)!r} -> {record.get(k)!r}" for k in changed[:5])
            raise UserError(
                f"run folder {run_dir} holds a run with other settings ({details}); "
                "pass --overwrite to replace it or choose another output folder"
            )
    if dist_utils.is_main_process():
        for folder in ("", *RUN_FOLDERS):  # what a killed write left behind
            remove_stale_temporaries(os.path.join(run_dir, folder))
        os.makedirs(os.path.join(run_dir, "cases"), exist_ok=True)
        write_json(args_file, dict(record))
    dist_utils.barrier()
