"""Parser checks: refused typos and contradictions, a sensible --workers default, readable --help."""

from __future__ import annotations

import re

import pytest

import generate_adv_samples as gen
import inference_on_saved_adv_samples as inf
import run_normal_or_adv_training as train
from engine.flags import default_workers
from tests.scripts.helpers import data_flags, tiny_model_flags


@pytest.fixture
def flags(tiny_dataset):
    return tiny_model_flags() + data_flags(tiny_dataset.data_dir, tiny_dataset.json_name) + ["--debugging"]


def _refused(parse, argv, capsys) -> str:
    with pytest.raises(SystemExit) as exit_:
        parse(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    return err


def test_a_misspelt_schedule_is_refused(flags, capsys):
    err = _refused(train.parse_args, flags + ["--lrschedule", "warmup_cosin"], capsys)
    assert "--lrschedule" in err and "warmup_cosine" in err
    assert train.parse_args(flags + ["--lrschedule", "constant", "--max_epochs", "1"]).lrschedule == "constant"


def test_a_warmup_longer_than_the_run_is_refused(flags, capsys):
    err = _refused(train.parse_args, flags + ["--max_epochs", "1"], capsys)  # default warm-up: 50 epochs
    assert "--warmup_epochs 50 exceeds --max_epochs 1" in err
    assert train.parse_args(flags + ["--max_epochs", "3", "--warmup_epochs", "3"]).warmup_epochs == 3


def test_workers_default_fits_the_machine(tiny_dataset):
    import os

    argv = ["--data_dir", tiny_dataset.data_dir, "--json_list", tiny_dataset.json_name, "--debugging"]
    workers = train.parse_args(argv + tiny_model_flags()).workers  # no --workers typed
    assert workers == default_workers() and 0 <= workers <= min(4, len(os.sched_getaffinity(0)) - 1)


@pytest.mark.parametrize("parse", [gen.parse_args, inf.parse_args, train.parse_args])
def test_help_names_each_default_once(parse, capsys):
    with pytest.raises(SystemExit):
        parse(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: the dataset's class count, btcv 14)" in text  # the help's own words, not "None" after them
    assert not re.search(r"\(default[^()]*\) \(default", text)  # one "(default ...)" per flag
