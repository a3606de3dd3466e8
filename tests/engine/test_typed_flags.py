"""engine.cli.read_flags / complete: a driver reads the user's flags once and completes them per run with
typed values; the result is what the script's own parser gives for the equivalent command line."""

from __future__ import annotations

import pytest

import studies.sweep as sweep
from engine import cli
from tests.scripts.helpers import data_flags, make_tiny_checkpoint, tiny_model_flags
from utils.errors import UserError


@pytest.fixture(scope="module")
def argv(tiny_dataset, tmp_path_factory):
    checkpoint = make_tiny_checkpoint(str(tmp_path_factory.mktemp("ckpt") / "model.pt"))
    return tiny_model_flags() + data_flags(tiny_dataset.data_dir, tiny_dataset.json_name) + [
        "--pretrained_path", checkpoint, "--debugging"]


def test_completed_values_equal_the_parsed_command_line(argv):
    typed = cli.complete(cli.read_flags(cli.GENERATION, argv),
                         {"attack_name": "vafa-3d", "q_max": 30, "block_size": (4, 4, 4), "use_ssim_loss": True,
                          "eps": 8})
    parsed = cli.parse_generation_args([*argv, "--attack_name", "vafa-3d", "--q_max", "30", "--block_size", "4", "4",
                                        "4", "--use_ssim_loss", "--eps", "8"])
    assert vars(typed) == vars(parsed)
    assert isinstance(typed.eps, float)  # an integer of a float flag is held as the parser holds it


def test_the_read_flags_are_not_changed_by_completing_them(argv):
    flags = cli.read_flags(cli.GENERATION, argv)
    cli.complete(flags, {"q_max": 40})
    assert cli.complete(flags).q_max == cli.parse_generation_args(argv).q_max != 40


def test_a_completed_value_goes_through_the_scripts_checks(argv):
    flags = cli.read_flags(cli.GENERATION, argv, raising=True)
    with pytest.raises(UserError, match="block_size"):
        cli.complete(flags, {"attack_name": "vafa-3d", "block_size": (5, 5, 5)}, raising=True)  # does not divide the ROI
    with pytest.raises(UserError, match="no flag --nonsense"):
        cli.complete(flags, {"nonsense": 1}, raising=True)


def test_flag_values_are_typed_as_the_flag_types_them():
    assert cli.flag_value(cli.GENERATION, "q_max", "30") == 30 and cli.flag_value(cli.GENERATION, "eps", "4") == 4.0
    assert cli.flag_value(cli.GENERATION, "block_size", "8x8x4") == (8, 8, 4)
    assert cli.flag_value(cli.GENERATION, "use_ssim_loss", "false") is False
    assert cli.flag_value(cli.GENERATION, "vafa_normalise", "clip") == "clip"
    for key, text, message in (("q_max", "many", "cannot read"), ("vafa_normalise", "round", "not one of"),
                               ("use_ssim_loss", "yes", "switch"), ("no_such_flag", "1", "no flag")):
        with pytest.raises(UserError, match=message):
            cli.flag_value(cli.GENERATION, key, text)


def test_a_grid_switch_set_false_turns_a_preset_switch_off(argv, tmp_path):
    """VAFA-3D's paper setting has the SSIM term on; ``use_ssim_loss=false`` in a grid turns it off
    (a command line can only add a switch, a typed value can also clear it)."""
    preset = sweep.build_preset(None, ["use_ssim_loss=true,false"], attack="vafa-3d")
    settings = sweep.SweepSettings(preset=preset, common=tuple(a for a in argv if a != "--debugging"),
                                   out=str(tmp_path))
    assert [sweep.cell_args(settings, c).use_ssim_loss for c in preset.cells] == [True, False]


def test_a_grid_key_that_is_no_flag_is_refused_in_one_line():
    with pytest.raises(UserError, match=r"--grid q_maxx=10: no flag --q_maxx"):
        sweep.build_preset(None, ["q_maxx=10"])
