"""Run folders of the evaluation scripts: create, reuse for a resume, or refuse to mix runs."""

from __future__ import annotations

import contextlib
import os
import shutil
from typing import Any, Mapping

from utils import distributed as dist_utils
from utils.errors import UserError
from utils.io import file_fingerprint, read_json, remove_stale_temporaries, same_content, write_json

RUN_FILES = ("results.json", "per_case.csv", "args.json", "log.out", "inputs.json")
RUN_FOLDERS = ("cases", "figures", "imagesTsClean", "labelsTsClean", "imagesTsAdv",
               "imagesTrClean", "labelsTrClean", "imagesTrAdv")
LOCK_FILE = ".lock"
INPUTS_FILE = "inputs.json"
"""The content of the files a run's numbers come from beyond its flags (:func:`utils.io.file_fingerprint`
per role; the evaluation jobs record their checkpoint): a path that now holds other bytes (retrained
weights saved over the old ones) makes the folder's finished cases stale."""


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


@contextlib.contextmanager
def run_lock(run_dir: str | None, hint: str = "wait for it to finish (its cases are then skipped here) or choose "
                                               "another output folder"):
    """Hold an exclusive lock on ``run_dir`` for the block (rank 0 of a sharded run; no-op for ``None``).
    ``hint`` is the fix the refusal names.

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
            raise UserError(f"another run is writing to {run_dir} right now; {hint}") from None
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def changed_inputs(run_dir: str, inputs: Mapping[str, str]) -> list[str]:
    """The roles in ``inputs`` (``{role: path}``) whose file holds other content than when the run
    in ``run_dir`` recorded it (:data:`INPUTS_FILE`); empty when nothing was recorded (a folder
    from an older version) or the record is unreadable (it is written again)."""
    path = os.path.join(run_dir, INPUTS_FILE)
    if not os.path.exists(path):
        return []
    try:
        recorded = read_json(path)
    except (OSError, ValueError):
        return []
    return [f"{role} {file}" for role, file in inputs.items()
            if isinstance(recorded.get(role), Mapping) and not same_content(recorded[role], file)]


def record_inputs(run_dir: str, inputs: Mapping[str, str]) -> None:
    """Write :data:`INPUTS_FILE`: each input's fingerprint (size, modification time, SHA-256);
    an unchanged record is left as it is (no hash is computed again)."""
    path = os.path.join(run_dir, INPUTS_FILE)
    try:
        recorded = read_json(path) if os.path.exists(path) else {}
    except (OSError, ValueError):
        recorded = {}
    now = {}
    for role, file in inputs.items():
        old = recorded.get(role) if isinstance(recorded, Mapping) else None
        quick = file_fingerprint(file, digest=False)
        if (isinstance(old, Mapping) and old.get("path") == os.path.abspath(file) and "sha256" in old
                and all(old.get(k) == v for k, v in quick.items())):
            now[role] = dict(old)
        else:
            now[role] = {"path": os.path.abspath(file), **file_fingerprint(file)}
    if now != recorded:
        write_json(path, now)


def prepare_run_dir(run_dir: str, record: Mapping, runtime_keys, overwrite: bool, path_keys=frozenset(),
                    defaults: Mapping = None, inputs: Mapping[str, str] = None) -> None:
    """Create or reuse a run folder: never silently mix two different runs.

    Call it under :func:`run_lock`. An existing folder
    whose ``args.json`` records other numbers-changing settings is an error unless
    ``overwrite``; with ``overwrite`` only the files this tool writes are removed. Anything
    else in the folder is left alone. Temporary files of a killed write are removed, then
    ``args.json`` is written with ``record`` (the run's resolved arguments).

    Args:
        run_dir: the run folder.
        record: the run's arguments as recorded in ``args.json``.
        runtime_keys: keys of ``record`` that do not change a run's numbers.
        overwrite: start the folder afresh.
        path_keys: keys of ``record`` holding paths (compared canonically).
        defaults: each flag's default, for keys an older ``args.json`` lacks.
        inputs: ``{role: path}`` of the files the numbers come from (the checkpoint ...);
            their content is recorded in :data:`INPUTS_FILE` and compared on a resume.

    Raises:
        UserError: the folder holds an unreadable ``args.json``, or holds a run
            with other settings or made from other file contents, and ``overwrite`` is off.
    """
    inputs = {role: file for role, file in (inputs or {}).items() if file and os.path.isfile(file)}
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
        if changed:
            details = ", ".join(f"{k}: {previous.get(k)!r} -> {record.get(k)!r}" for k in changed[:5])
            raise UserError(
                f"run folder {run_dir} holds a run with other settings ({details}); choose another output folder "
                "to keep it (or, to discard its finished cases, pass --overwrite)"
            )
        stale = changed_inputs(run_dir, inputs)
        if stale:
            raise UserError(
                f"run folder {run_dir} holds cases computed from other contents of {', '.join(stale)} (the file "
                "changed since); choose another output folder to keep them (or, to discard them, pass --overwrite)"
            )
    if dist_utils.is_main_process():
        for folder in ("", *RUN_FOLDERS):  # what a killed write left behind
            remove_stale_temporaries(os.path.join(run_dir, folder))
        os.makedirs(os.path.join(run_dir, "cases"), exist_ok=True)
        write_json(args_file, dict(record))
        if inputs:
            record_inputs(run_dir, inputs)
    dist_utils.barrier()
