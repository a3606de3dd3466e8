"""The command line: parsing the three entry scripts' flags (:mod:`engine.flags`), their checks, what a
checkpoint or a generation run folder fills in, and the typed settings.

With :mod:`engine.jobs`, the only place that reads the parsed ``Namespace``: each script parses here,
then calls one of :func:`engine.jobs.generation_job`, :func:`~engine.jobs.inference_job`,
:func:`~engine.jobs.training_job`, and hands the typed result to the library.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import logging
import os
import sys
from typing import Any, Callable, Iterable, Mapping, Sequence

from attacks import AttackSettings, all_attack_options, get_attack_class
from data.datasets import get_dataset
from data.loading import DataSettings
from networks import ModelSettings, WindowSettings, get_model_entry, model_options
from utils.distributed import LaunchSettings
from utils.errors import EXIT_USER_ERROR, UserError
from utils.io import to_jsonable
from utils.options import option_values
from utils.run_folder import RunLayout

from .flags import (RUNTIME_FLAGS, add_attack_args, add_data_args, add_eval_output_args, add_inference_output_args,
                    add_inference_runtime_args, add_model_args, add_pretrained_args, add_runtime_args, add_training_args)

logger = logging.getLogger(__name__)

class ArgumentParser(argparse.ArgumentParser):
    """``argparse`` parser whose errors are one line (no usage dump), exit status 2; with
    ``raising=True`` an error raises :class:`UserError` instead (callers inside a larger run)."""

    def __init__(self, *args, raising: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.raising = raising

    def error(self, message: str):  # noqa: D102 - argparse API
        if self.raising:
            raise UserError(message)
        self.exit(EXIT_USER_ERROR, f"{self.prog}: error: {message} (see --help)\n")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Adds ``(default: ...)`` to a flag's help unless its help already says what the default is."""

    def _get_help_string(self, action):  # noqa: D102 - argparse API
        if "(default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def make_parser(description: str, raising: bool = False) -> ArgumentParser:
    return ArgumentParser(description=description, formatter_class=HelpFormatter, raising=raising)


def given_flags(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> set[str]:
    """Destinations of the flags typed in ``argv`` (abbreviations included), as opposed to defaults."""
    defaults = {action: action.default for action in parser._actions}
    try:
        for action in parser._actions:
            action.default = argparse.SUPPRESS
        return set(vars(parser.parse_args(argv)))
    finally:
        for action, default in defaults.items():
            action.default = default


# --------------------------------------------------------------------------- checks


MODEL_FLAG_FALLBACKS = dict(in_channels=1, roi_x=96, roi_y=96, roi_z=96, space_x=1.5, space_y=1.5, space_z=2.0,
                           infer_overlap=0.5, sw_blend="constant")
"""Values of the model-dependent flags left unset, when the model supplies none (the release's defaults)."""


def fill_model_defaults(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """Flags the user left unset take the model's values (a trained-model folder's patch, spacing ...),
    else :data:`MODEL_FLAG_FALLBACKS`."""
    entry = get_model_entry(args.model_name)
    supplied: dict = {}
    if entry.defaults is not None:
        try:
            supplied = entry.defaults(option_values(entry.options, args))
        except ValueError as err:  # UserError included
            parser.error(str(err))
    for name, value in {**MODEL_FLAG_FALLBACKS, **supplied}.items():
        if getattr(args, name, None) is None:
            setattr(args, name, value)


def check_model_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """Model and data flags: required folder, ranges, the model's and the dataset's defaults filled in."""
    fill_model_defaults(args, parser)
    if not args.data_dir:
        parser.error("--data_dir is required: the dataset folder holding imagesTr/, labelsTr/ and the JSON list")
    if not 0 <= args.infer_overlap < 1:
        parser.error(f"--infer_overlap must be in [0, 1), got {args.infer_overlap}")
    spec = get_dataset(args.dataset)
    if args.out_channels is None:
        args.out_channels = spec.num_classes
    if args.a_min is None and args.a_max is None and spec.window is not None:
        args.a_min, args.a_max = spec.window
    if (args.a_min is None) != (args.a_max is None):
        parser.error("--a_min and --a_max go together: give both (an intensity window) or neither")
    if args.a_min is not None and not args.a_min < args.a_max:
        parser.error(f"--a_min must be below --a_max, got {args.a_min} and {args.a_max}")
    if not 0 <= args.b_min < args.b_max <= 1:
        parser.error(f"--b_min/--b_max must satisfy 0 <= b_min < b_max <= 1 (attacks and saved volumes assume "
                     f"images in [0, 1]), got {args.b_min} and {args.b_max}")
    for name in ("space_x", "space_y", "space_z"):
        value = getattr(args, name)
        if not (value > 0 and value != float("inf")):
            parser.error(f"--{name} must be a finite spacing > 0 (mm), got {value}")
    for name in ("RandFlipd_prob", "RandRotate90d_prob", "RandScaleIntensityd_prob", "RandShiftIntensityd_prob"):
        if not 0 <= getattr(args, name) <= 1:
            parser.error(f"--{name} must be a probability in [0, 1], got {getattr(args, name)}")
    for name in ("in_channels", "out_channels", "roi_x", "roi_y", "roi_z", "sw_batch_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1, got {getattr(args, name)}")
    if args.workers < 0:
        parser.error(f"--workers must not be negative, got {args.workers}")
    try:
        option_values(get_model_entry(args.model_name).options, args)
    except ValueError as err:
        parser.error(str(err))
    _check_model_builds(args, parser)


def _check_model_builds(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """Run the builder's own checks (ROI rules ...) at parse time, on the meta device (no memory).

    A builder that cannot run on the meta device (one that reads tensor values while it
    builds) is checked when the run builds the real model instead.
    """
    import torch

    try:
        with torch.device("meta"):
            model_settings(args).build()
    except ValueError as err:  # UserError included
        parser.error(str(err))
    except Exception:  # noqa: BLE001 - not meta-compatible: checked at build time
        logger.debug("model %s not checked on the meta device", args.model_name)


def check_attack_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """The attack's own checks (its constructor and tile check) as one-line parser errors;
    list-valued options (``--block_size``) become tuples, as the release's checks left them."""
    for option in all_attack_options():
        if isinstance(getattr(args, option.name, None), list):
            setattr(args, option.name, tuple(getattr(args, option.name)))
    try:
        settings = attack_settings(args)
        settings.validate((args.roi_x, args.roi_y, args.roi_z))
    except ValueError as err:
        parser.error(str(err))
    if args.attack_batch_size < 1:
        parser.error(f"--attack_batch_size must be at least 1, got {args.attack_batch_size}")
    if settings.targeted and not 0 <= args.target_class < args.out_channels:
        parser.error(f"--target_class must be in [0, {args.out_channels - 1}], got {args.target_class}")


def check_pretrained_args(args: argparse.Namespace, parser: argparse.ArgumentParser, required: bool) -> None:
    if args.pretrained_path:
        args.use_pretrained = True
    elif get_model_entry(args.model_name).loads_weights:
        return  # the model's own folder holds its weights
    elif args.use_pretrained or required:
        parser.error("--pretrained_path is required: the full path of the model checkpoint (.pt)")


def check_eval_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    check_pretrained_args(args, parser, required=True)
    if args.gen_val_adv_mode and args.gen_train_adv_mode:
        parser.error("--gen_val_adv_mode and --gen_train_adv_mode exclude each other; pick one split")
    if args.max_cases is not None and args.max_cases < 1:
        parser.error(f"--max_cases must be at least 1, got {args.max_cases}")


def check_training_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """Conflicts among the training flags (one-line ``parser.error``, exit status 2)."""
    check_pretrained_args(args, parser, required=False)
    if args.freq_reg_mode and not args.adv_training_mode:
        parser.error("--freq_reg_mode needs --adv_training_mode (VAFT is adversarial training with the frequency loss)")
    if (args.resume_latest or args.resume_best or args.resume_but_restart) and not args.resume:
        parser.error("--resume_latest/--resume_best/--resume_but_restart need --resume")
    if args.resume:
        if not args.checkpoint_dir:
            parser.error("--resume needs --checkpoint_dir: the folder given as --save_model_dir to the run to continue")
        if args.resume_latest == args.resume_best:
            parser.error("--resume needs exactly one of --resume_latest (model_latest.pt) and --resume_best (model_best.pt)")
    if not args.debugging and not args.save_model_dir:
        if not args.resume:
            parser.error("--save_model_dir is required (where the run folder goes), or pass --debugging to save nothing")
        if args.resume_but_restart:
            parser.error("--resume_but_restart starts a new run: pass --save_model_dir for its folder "
                         "(the checkpoint's own folder is never overwritten)")
    for name in ("batch_size", "max_epochs", "val_every", "val_attack_cases"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1, got {getattr(args, name)}")
    if args.warmup_epochs < 0:
        parser.error(f"--warmup_epochs must not be negative, got {args.warmup_epochs}")
    if args.lrschedule == "warmup_cosine" and args.warmup_epochs > args.max_epochs:
        parser.error(f"--warmup_epochs {args.warmup_epochs} exceeds --max_epochs {args.max_epochs}: the run would end "
                     "inside the linear warm-up (epoch 0 at learning rate 0); pass --warmup_epochs at most "
                     f"{args.max_epochs}, or --lrschedule constant")
    for name in ("optim_lr", "reg_weight", "momentum", "freq_reg_weight", "smooth_nr", "smooth_dr"):
        value = getattr(args, name)
        if not (value >= 0 and value != float("inf")):
            parser.error(f"--{name} must be a finite number >= 0, got {value}")
    if args.noamp and args.precision not in (None, "fp32"):
        parser.error(f"--noamp (full precision) contradicts --precision {args.precision}; pass one of them")
    args.amp = not args.noamp


@dataclasses.dataclass(frozen=True)
class Script:
    """An entry script's command line: its flag groups, its checks (in order) and what fills the flags
    not typed (``adopter(args, parser, typed)``: a generation run folder, a checkpoint)."""

    description: str
    groups: tuple
    checks: tuple = ()
    adopters: tuple = ()

    def parser(self, raising: bool = False) -> ArgumentParser:
        parser = make_parser(self.description, raising)
        for add in self.groups:
            add(parser)
        return parser


@dataclasses.dataclass(frozen=True)
class Flags:
    """A command line read but not completed: the values it sets (defaults included) and the flags it typed.
    :func:`complete` turns it, with typed values on top, into a script's checked arguments; a driver reads
    the user's flags once and completes them per run (a sweep's cells, a transfer matrix's cells)."""

    script: Script
    args: argparse.Namespace
    typed: frozenset


def read_flags(script: Script, argv: Sequence[str] | None, raising: bool = False) -> Flags:
    """Parse ``argv`` with ``script``'s flags, without its adopters and checks."""
    parser = script.parser(raising)
    args = parser.parse_args(argv)
    return Flags(script, args, frozenset(given_flags(parser, argv)))


def complete(flags: Flags, values: Mapping[str, Any] | None = None, raising: bool = False) -> argparse.Namespace:
    """``flags`` with ``values`` set on top (each counts as typed), then the script's adopters and checks.

    Raises:
        UserError: with ``raising``, a refused flag or value (otherwise the process exits with status 2).
    """
    parser = flags.script.parser(raising)
    args = copy.deepcopy(flags.args)
    unknown = sorted(set(values or ()) - set(vars(args)))
    if unknown:
        parser.error(f"no flag {', '.join('--' + k for k in unknown)}")
    types = {action.dest: action.type for action in parser._actions}
    for key, value in (values or {}).items():
        setattr(args, key, _as_parsed(value, types.get(key)))
    typed = set(flags.typed) | set(values or ())
    for adopt in flags.script.adopters:
        adopt(args, parser, typed)
    for check in flags.script.checks:
        check(args, parser)
    return args


def _as_parsed(value: Any, kind: Callable | None) -> Any:
    """``value`` as the parser would hold it: a sequence as a list, an integer of a float flag as a float."""
    if isinstance(value, (list, tuple)):
        return [_as_parsed(v, kind) for v in value]
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def flag_value(script: Script, key: str, text: str) -> Any:
    """``text`` as flag ``--key`` of ``script`` takes it (its type, choices, switch or list; a list is
    written ``8x8x4``).

    Raises:
        UserError: ``script`` has no such flag, or the value is not one it takes.
    """
    action = next((a for a in script.parser()._actions if a.dest == key), None)
    if action is None or key == "help":
        raise UserError(f"no flag --{key}")
    if action.nargs == 0:  # a switch
        if text.lower() not in ("true", "false"):
            raise UserError(f"--{key} is a switch: true or false, got {text!r}")
        return text.lower() == "true"
    convert = action.type or str
    items = text.split("x") if action.nargs not in (None, "?") else [text]
    try:
        converted = [convert(item) for item in items]
    except (TypeError, ValueError, argparse.ArgumentTypeError) as err:
        raise UserError(f"--{key}: cannot read {text!r} ({err})") from None
    if action.choices is not None and any(v not in action.choices for v in converted):
        raise UserError(f"--{key}: {text!r} is not one of {', '.join(map(str, action.choices))}")
    return tuple(converted) if action.nargs not in (None, "?") else converted[0]


def parse(description: str, argv: Sequence[str] | None, groups: Iterable[Callable], checks: Iterable[Callable],
          adopters: Iterable[Callable] = (), raising: bool = False) -> argparse.Namespace:
    """Build a parser from flag groups, parse ``argv``, fill the flags not typed from what the run
    builds on (the adopters), then run the checks in order (:func:`read_flags`, :func:`complete`).

    Raises:
        UserError: with ``raising``, a refused flag (otherwise the process exits with status 2).
    """
    script = Script(description, tuple(groups), tuple(checks), tuple(adopters))
    return complete(read_flags(script, argv, raising), raising=raising)


def recorded_args(record: Mapping[str, Any], script: Script) -> argparse.Namespace:
    """A run's recorded arguments (its ``args.json``) as the script's ``Namespace``: the script's defaults
    for flags newer than the record, values held as the parser holds them."""
    parser = script.parser()
    args = parser.parse_args([])
    types = {action.dest: action.type for action in parser._actions}
    for key, value in record.items():
        setattr(args, key, _as_parsed(value, types.get(key)))
    return args


def flag_defaults(groups: Iterable[Callable]) -> dict:
    """Every flag's default of the parser built from ``groups`` (an older run folder lacks newer flags);
    a flag whose unset value is resolved later counts as its fallback, which an older run ran with."""
    parser = make_parser("")
    for add in groups:
        add(parser)
    defaults = to_jsonable({a.dest: a.default for a in parser._actions if a.dest != "help"})
    defaults.update({k: v for k, v in MODEL_FLAG_FALLBACKS.items() if defaults.get(k, 0) is None})
    return defaults


MODEL_FLAGS = ("model_name", "in_channels", "out_channels", "roi_x", "roi_y", "roi_z")
"""Flags that shape the network besides each model's own options (:func:`model_flag_names`)."""

ADV_RUN_RUNTIME_FLAGS = frozenset({"save_adv_images_dir", "adv_images_dir", "adv_run_dir", "no_sub_dir_adv_images",
                                   "results_dir", "save_dtype", "fused_dice_ce", "attack_batch_size"})
"""Flags of a generation run's ``args.json`` that inference does not take over from it (beyond
:data:`RUNTIME_FLAGS`): where things were written, and how the attack ran."""


def model_flag_names() -> tuple[str, ...]:
    """Every flag that decides the network's shape: :data:`MODEL_FLAGS` and the models' own options."""
    return MODEL_FLAGS + tuple(option.name for option in model_options())


def _take(args: argparse.Namespace, record: dict, keys: Iterable[str], typed: set[str]) -> dict:
    """Set each of ``keys`` that ``record`` holds and the user did not type; returns what changed."""
    taken = {}
    for key in keys:
        if key in record and key not in typed and hasattr(args, key):
            value = tuple(record[key]) if isinstance(record[key], list) else record[key]
            if getattr(args, key) not in (None, value):
                taken[key] = value
            setattr(args, key, value)
    return taken


def _shown_flags(values: dict) -> str:
    return " ".join(f"--{k} {' '.join(map(str, v)) if isinstance(v, tuple) else v}" for k, v in values.items())


def adopt_checkpoint_model_flags(args: argparse.Namespace, parser: argparse.ArgumentParser, typed: set[str]) -> None:
    """A checkpoint builds its own model: the model flags the user did not type are taken from the
    ``args`` the training run stored in it (flags typed explicitly win). A checkpoint without
    ``args`` (the release's, or one from elsewhere) leaves the flags as they are."""
    from networks.checkpoint import read_checkpoint_args

    if not getattr(args, "pretrained_path", ""):
        return
    stored = read_checkpoint_args(args.pretrained_path)
    if not stored:
        return
    taken = _take(args, stored, model_flag_names(), typed)
    if taken:
        sys.stderr.write(f"model flags from the checkpoint {args.pretrained_path}: {_shown_flags(taken)}\n")


def adopt_adv_run(args: argparse.Namespace, parser: argparse.ArgumentParser, typed: set[str]) -> None:
    """``--adv_run_dir``: take the generation run's attack, data, model and checkpoint flags from its
    ``args.json`` (flags typed explicitly win; runtime and output flags are this run's own)."""
    if not getattr(args, "adv_run_dir", None):
        return
    from utils.io import read_json

    path = RunLayout(args.adv_run_dir).args
    if not os.path.isfile(path):
        parser.error(f"--adv_run_dir {args.adv_run_dir} holds no args.json: pass the run folder that "
                     "generate_adv_samples.py wrote (it holds args.json and imagesTsAdv/)")
    try:
        record = read_json(path)
    except (OSError, ValueError) as err:
        parser.error(f"{path} is unreadable ({err})")
    skip = RUNTIME_FLAGS | ADV_RUN_RUNTIME_FLAGS
    _take(args, record, [key for key in record if key not in skip], typed)
    if "max_cases" in record and "max_cases" not in typed:
        args.max_cases = record["max_cases"]  # only those cases' volumes were saved



EVAL_GROUPS = (add_model_args, add_data_args, add_pretrained_args, add_attack_args, add_eval_output_args, add_runtime_args)
INFERENCE_GROUPS = (add_model_args, add_data_args, add_pretrained_args, add_attack_args, add_inference_output_args,
                    add_inference_runtime_args)
TRAINING_GROUPS = (add_model_args, add_data_args, add_pretrained_args, add_attack_args, add_training_args, add_runtime_args)


GENERATION_DESCRIPTION = "Attack a trained segmentation model on a dataset split and report clean vs adversarial metrics."
INFERENCE_DESCRIPTION = "Evaluate a model on clean volumes vs adversarial volumes saved earlier by generate_adv_samples.py."


def check_generation_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """``generate_adv_samples.py``: a run folder to write, unless ``--debugging`` saves nothing."""
    if not args.debugging and not args.save_adv_images_dir:
        parser.error("--save_adv_images_dir is required (where the run folder goes), or pass --debugging to save nothing")


def check_inference_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """``inference_on_saved_adv_samples.py``: the generation run folder, or the folder its volumes were saved to."""
    if not args.adv_images_dir and not args.adv_run_dir:
        parser.error("--adv_run_dir (the generation run folder) or --adv_images_dir (the folder given as "
                     "--save_adv_images_dir when the volumes were generated) is required")
    if args.adv_images_dir and args.adv_run_dir:
        parser.error("--adv_run_dir and --adv_images_dir exclude each other: --adv_run_dir is the run folder itself")


EVAL_CHECKS = (check_model_args, check_eval_args, check_attack_args)


GENERATION = Script(GENERATION_DESCRIPTION, EVAL_GROUPS, EVAL_CHECKS + (check_generation_args,),
                    adopters=(adopt_checkpoint_model_flags,))
"""``generate_adv_samples.py``: the checkpoint fills the model flags not typed."""
INFERENCE = Script(INFERENCE_DESCRIPTION, INFERENCE_GROUPS, EVAL_CHECKS + (check_inference_args,),
                   adopters=(adopt_adv_run, adopt_checkpoint_model_flags))
"""``inference_on_saved_adv_samples.py``: no generation-only flags; ``--adv_run_dir`` and the checkpoint fill
the flags not typed."""


def training_script(description: str) -> Script:
    """``run_normal_or_adv_training.py`` (its description is the script's own)."""
    return Script(description, TRAINING_GROUPS, (check_model_args, check_attack_args, check_training_args),
                  adopters=(adopt_checkpoint_model_flags,))


def parse_generation_args(argv: Sequence[str] | None = None, raising: bool = False) -> argparse.Namespace:
    """``generate_adv_samples.py``'s command line, parsed and checked (``raising``: see :func:`parse`)."""
    return complete(read_flags(GENERATION, argv, raising), raising=raising)


def parse_inference_args(argv: Sequence[str] | None = None, raising: bool = False) -> argparse.Namespace:
    """``inference_on_saved_adv_samples.py``'s command line, parsed and checked (``raising``: see :func:`parse`)."""
    return complete(read_flags(INFERENCE, argv, raising), raising=raising)


def parse_training_args(description: str, argv: Sequence[str] | None) -> argparse.Namespace:
    """Parser of the training script."""
    return complete(read_flags(training_script(description), argv))


# --------------------------------------------------------------------------- typed settings


def attack_settings(args: argparse.Namespace) -> AttackSettings:
    """The selected attack with its own option values (as typed), checked for finiteness."""
    cls = get_attack_class(args.attack_name)
    return AttackSettings(name=args.attack_name, values=option_values(cls.options, args),
                          target_class=args.target_class, batch_size=args.attack_batch_size)


def model_settings(args: argparse.Namespace) -> ModelSettings:
    """The selected model with only the options it declares."""
    entry = get_model_entry(args.model_name)
    return ModelSettings(name=args.model_name, in_channels=args.in_channels, out_channels=args.out_channels,
                         roi=(args.roi_x, args.roi_y, args.roi_z), options=option_values(entry.options, args))


def data_settings(args: argparse.Namespace) -> DataSettings:
    return DataSettings(
        dataset=args.dataset, data_dir=args.data_dir, json_list=args.json_list,
        a_min=args.a_min, a_max=args.a_max, b_min=args.b_min, b_max=args.b_max,
        spacing=(args.space_x, args.space_y, args.space_z), roi=(args.roi_x, args.roi_y, args.roi_z),
        workers=args.workers, flip_prob=args.RandFlipd_prob, rotate90_prob=args.RandRotate90d_prob,
        scale_intensity_prob=args.RandScaleIntensityd_prob, shift_intensity_prob=args.RandShiftIntensityd_prob,
        use_normal_dataset=args.use_normal_dataset, crop_sampling=args.crop_sampling,
        nnunet_model_dir=getattr(args, "nnunet_model_dir", None),  # model flags: absent from a data-only namespace
        nnunet_fold=str(getattr(args, "nnunet_fold", ("0",))[0]),
        nnunet_cases=getattr(args, "nnunet_cases", "fold"),  # a record from before the flag lacks it
    )


def window_settings(args: argparse.Namespace) -> WindowSettings:
    return WindowSettings(roi=(args.roi_x, args.roi_y, args.roi_z), sw_batch_size=args.sw_batch_size,
                          overlap=args.infer_overlap,
                          blend=getattr(args, "sw_blend", None) or "constant")  # an older args.json lacks it


def launch_settings(args: argparse.Namespace) -> LaunchSettings:
    return LaunchSettings(device=args.device, distributed=args.distributed, world_size=args.world_size,
                          rank=args.rank, dist_url=args.dist_url, dist_backend=args.dist_backend)

