"""The evaluation loop's case finisher: in order, at most one case behind, errors surfaced, drained on exit."""

from __future__ import annotations

import threading

import pytest
import torch

from engine.evaluation import CaseFinisher, finishes_in_background

CPU = torch.device("cpu")


@pytest.mark.parametrize("background", [True, False])
def test_cases_finish_in_order_each_once(background):
    done = []
    with CaseFinisher(background, CPU) as finisher:
        for i in range(5):
            finisher.submit(done.append, i)
    assert done == [0, 1, 2, 3, 4]


def test_the_caller_runs_at_most_one_case_ahead():
    release = threading.Event()
    started, finished = [], []

    def slow(i):
        started.append(i)
        if i == 0:
            assert release.wait(10)
        finished.append(i)

    with CaseFinisher(True, CPU) as finisher:
        finisher.submit(slow, 0)
        # case 0 is held; handing over case 1 must wait for it
        submitter = threading.Thread(target=finisher.submit, args=(slow, 1))
        submitter.start()
        submitter.join(0.3)
        assert submitter.is_alive() and finished == []
        release.set()
        submitter.join(10)
    assert finished == [0, 1]


def test_background_work_runs_off_the_calling_thread_with_its_thread_count():
    seen = []
    with CaseFinisher(True, CPU) as finisher:
        finisher.submit(lambda: seen.append((threading.current_thread(), torch.get_num_threads())))
    assert seen[0][0] is not threading.current_thread()
    assert seen[0][1] == torch.get_num_threads()


def test_an_error_surfaces_at_the_next_hand_over():
    def fail():
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        with CaseFinisher(True, CPU) as finisher:
            finisher.submit(fail)
            finisher.submit(lambda: None)


def test_leaving_the_loop_on_an_error_still_finishes_the_handed_over_case():
    done = []
    gate = threading.Event()

    def slow():
        assert gate.wait(10)
        done.append("case 0 on disk")

    with pytest.raises(KeyboardInterrupt):
        with CaseFinisher(True, CPU) as finisher:
            finisher.submit(slow)
            threading.Timer(0.2, gate.set).start()
            raise KeyboardInterrupt  # a stop signal while the next case is attacked
    assert done == ["case 0 on disk"]


def test_auto_finishes_in_the_background_only_beside_an_accelerator():
    assert not finishes_in_background("auto", torch.device("cpu"))
    assert finishes_in_background("auto", torch.device("cuda", 1))
    assert finishes_in_background("background", torch.device("cpu"))
    assert not finishes_in_background("inline", torch.device("cuda"))
