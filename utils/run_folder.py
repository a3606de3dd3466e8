"""Run folders of the scripts (evaluation and training): create, lock, reuse for a resume, or refuse to mix runs."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from dataclasses import dataclass
from typing import Any, Mapping

from utils import distributed as dist_utils
from utils.errors import UserError
from utils.io import file_fingerprint, read_json, remove_stale_temporaries, same_content, write_json

INPUTS_FILE = "inputs.json"
"""The content of the files a run's numbers come from beyond its flags (:func:`utils.io.file_fingerprint`
per role; the evaluation jobs record their checkpoint): a path that now holds other bytes (retrained
weights saved over the old ones) makes the folder's finished cases stale."""

SPLIT_TAGS = {"validation": "Ts", "training": "Tr"}
"""The release's infix of a split in the saved volumes' folder names (``imagesTsAdv``, ``imagesTrAdv``)."""


@dataclass(frozen=True)
class RunLayout:
    """Where a run folder keeps each of its files: the one place that spells their names.

    A generation run holds ``args.json``, ``results.json``, ``per_case.csv``, ``log.out``, ``inputs.json``,
    ``cases/<case>.json`` (each finished case), ``figures/``, the saved volumes ``images{Ts,Tr}Clean/clean_<case>``,
    ``labels{Ts,Tr}Clean/<label file>``, ``images{Ts,Tr}Adv/adv_<case>`` (the release's names) and, with
    ``--save_predictions``, ``pred{Ts,Tr}Clean/`` and ``pred{Ts,Tr}Adv/`` (named as the label files, as nnU-Net
    names predictions). An inference run holds the same records, without volumes.

    Args:
        root: the run folder.
        split: ``validation`` or ``training`` (``--gen_train_adv_mode``), the saved volumes' split.
    """

    root: str
    split: str = "validation"

    FILES = ("results.json", "per_case.csv", "args.json", "log.out", INPUTS_FILE)
    """The records a run writes (``--overwrite`` removes them, and nothing else at the top)."""

    @property
    def tag(self) -> str:
        return SPLIT_TAGS[self.split]

    def file(self, name: str) -> str:
        return os.path.join(self.root, name)

    @property
    def results(self) -> str:
        return self.file("results.json")

    @property
    def per_case(self) -> str:
        return self.file("per_case.csv")

    @property
    def args(self) -> str:
        return self.file("args.json")

    @property
    def log(self) -> str:
        return self.file("log.out")

    @property
    def cases(self) -> str:
        return self.file("cases")

    def case_record(self, case: str) -> str:
        return os.path.join(self.cases, f"{case}.json")

    def figure(self, case: str) -> str:
        return os.path.join(self.root, "figures", f"{case.split('.')[0]}.png")

    def clean_image(self, case: str) -> str:
        return os.path.join(self.root, f"images{self.tag}Clean", f"clean_{case}")

    def clean_label(self, label_file: str) -> str:
        return os.path.join(self.root, f"labels{self.tag}Clean", label_file)

    def adv_image(self, case: str) -> str:
        return os.path.join(self.root, f"images{self.tag}Adv", f"adv_{case}")

    def predictions(self, label_file: str) -> tuple[str, str]:
        """``(clean, adversarial)`` label maps of ``--save_predictions``."""
        return (os.path.join(self.root, f"pred{self.tag}Clean", label_file),
                os.path.join(self.root, f"pred{self.tag}Adv", label_file))

    @classmethod
    def folders(cls) -> tuple[str, ...]:
        """Every sub-folder a run may write (``--overwrite`` removes these, and no other)."""
        per_split = [f"{kind}{tag}{which}" for tag in SPLIT_TAGS.values()
                     for kind, which in (("images", "Clean"), ("labels", "Clean"), ("images", "Adv"),
                                         ("pred", "Clean"), ("pred", "Adv"))]
        return ("cases", "figures", *per_split)


RUN_FILES = RunLayout.FILES
RUN_FOLDERS = RunLayout.folders()
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
    layout = RunLayout(run_dir)
    finished = os.path.isdir(layout.cases) and any(name.endswith(".json") for name in os.listdir(layout.cases))
    return finished or os.path.exists(layout.results)


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
                    defaults: Mapping = None, inputs: Mapping[str, str] = None, folder_flag: str = "") -> None:
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
        inputs: ``{role: path}`` of the files the numbers come from (the checkpoint ...);
            their content is recorded in :data:`INPUTS_FILE` and compared on a resume.
        folder_flag: the flag that chooses the folder, named in the refusal.

    Raises:
        UserError: the folder holds an unreadable ``args.json``, or holds a run
            with other settings or made from other file contents, and ``overwrite`` is off.
    """
    inputs = {role: file for role, file in (inputs or {}).items() if file and os.path.isfile(file)}
    args_file = RunLayout(run_dir).args
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
        stale = changed_inputs(run_dir, inputs) if holds_finished_cases(run_dir) else []
        if stale:
            raise UserError(
                f"run folder {run_dir} holds cases computed from other contents of {', '.join(stale)} (the file "
                f"changed since); choose another output folder to keep them{f' (with {folder_flag})' if folder_flag else ''} "
                "(or, to discard them, pass --overwrite)"
            )
    if dist_utils.is_main_process():
        for folder in ("", *RUN_FOLDERS):  # what a killed write left behind
            remove_stale_temporaries(os.path.join(run_dir, folder))
        os.makedirs(RunLayout(run_dir).cases, exist_ok=True)
        write_json(args_file, dict(record))
        if inputs:
            record_inputs(run_dir, inputs)
    dist_utils.barrier()
