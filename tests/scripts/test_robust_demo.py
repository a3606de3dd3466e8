"""scripts/robust_demo.py on the tiny dataset: every training kind from a checkpoint, evaluated by Table 6's
cells; a stopped run resumes without redoing a finished model; a changed base checkpoint is refused."""

from __future__ import annotations

import json
import os
import signal

import pytest
import torch

import training.trainer as tr
from training import run as training
from tests.scripts.helpers import data_flags, load_script, make_tiny_checkpoint, run_main, tiny_model_flags


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def robust_demo():
    return load_script("robust_demo", "robust_demo_script")


@pytest.fixture(scope="module")
def small_list(tiny_dataset, tmp_path_factory):
    """2 training cases and 1 validation case of the shared tiny dataset."""
    content = json.loads(open(tiny_dataset.json_path).read())
    root = str(tiny_dataset.data_dir)
    absolute = lambda items: [{k: os.path.join(root, v) for k, v in item.items()} for item in items]  # noqa: E731
    path = tmp_path_factory.mktemp("lists") / "small.json"
    path.write_text(json.dumps({"training": absolute(content["training"][:2]),
                                "validation": absolute(content["validation"][:1])}))
    return root, str(path)


def _argv(small_list, base, out, *extra):
    root, json_list = small_list
    return ["--out", str(out), "--pretrained_path", base, "--epochs", "1", "--train_steps", "1", "--eval_steps", "1",
            "--precision", "fp32", *extra, *tiny_model_flags(), *data_flags(root, json_list), "--infer_overlap", "0"]


TRAINER_OF = {"M_clean": "Trainer", "M_PGD": "AdversarialTrainer", "M_VAFA": "AdversarialTrainer",
              "M_VAFA clip": "AdversarialTrainer", "M_VAFA-FR": "VAFTTrainer", "M_VAFA-FR clip": "VAFTTrainer"}


def test_every_training_kind_fine_tunes_the_checkpoint_and_table6_evaluates_it(robust_demo, small_list, tmp_path,
                                                                               capsys):
    base = make_tiny_checkpoint(str(tmp_path / "base.pt"))
    base_weights = torch.load(base, map_location="cpu", weights_only=False)["model_state_dict"]
    # two columns here (the other test runs them all)
    argv = _argv(small_list, base, tmp_path / "out", "--attacks", "VAFA", "VAFA clip")
    code, err = run_main(robust_demo.main, argv, capsys)
    assert code == 0, err

    assert set(robust_demo.MODELS) == set(TRAINER_OF)
    checkpoints = {}
    for name, trainer_class in TRAINER_OF.items():
        folder = tmp_path / "out" / "models" / name.replace(" ", "_")
        manifest = json.loads((folder / "robust_demo.json").read_text())
        assert manifest["finished"] and manifest["model"] == name
        ckpt = torch.load(folder / "model_latest.pt", map_location="cpu", weights_only=False)
        assert ckpt["trainer"] == trainer_class and ckpt["epoch"] == 0  # one epoch, from the base weights:
        assert ckpt["args"]["use_pretrained"] and ckpt["args"]["max_epochs"] == 1
        moved = [k for k, v in ckpt["model_state_dict"].items() if not torch.equal(v, base_weights[k])]
        assert moved  # trained
        recorded = ckpt["args"]
        if "VAFA" in name:  # 32^3 does not divide the 32x32x16 ROI: the largest cube that does
            assert recorded["attack_name"] == "vafa-3d" and recorded["block_size"] == [16, 16, 16]
            assert recorded["vafa_normalise"] == ("clip" if "clip" in name else "slice")
            assert recorded["q_max"] == 20 and recorded["use_ssim_loss"] and recorded["steps"] == 1
        elif name == "M_PGD":
            assert recorded["attack_name"] == "pgd" and recorded["eps"] == 4
        checkpoints[name] = str(folder / "model_latest.pt")

    table = tmp_path / "out" / "table6"
    cells = json.loads((table / "sweep.json").read_text())["cells"]
    assert len(cells) == 6 * 2 and {c["status"] for c in cells} == {"done"}
    for cell in cells:
        report = json.loads(open(os.path.join(cell["run_dir"], "results.json")).read())
        assert report["args"]["pretrained_path"] == checkpoints[cell["model"]]
        assert report["overall"]["n_cases"] == 1 and report["args"]["steps"] == 1
        assert cell["dice_adv"] == report["overall"]["dice_adv"]
        if cell["attack"] == "vafa-3d":
            assert report["args"]["block_size"] == [16, 16, 16]
            assert report["args"]["vafa_normalise"] == ("clip" if cell["label"] == "VAFA clip" else "slice")
    text = (table / "tables.md").read_text()
    assert "| M_VAFA-FR | " in text and "Ours beside the paper's" in text and "16³ blocks" in text
    for name in ("robustness.png", "per_organ.md", "per_organ.png"):
        assert (table / name).is_file()


def test_a_stopped_run_resumes_without_redoing_a_finished_model(robust_demo, small_list, tmp_path, monkeypatch,
                                                                 capsys):
    base = make_tiny_checkpoint(str(tmp_path / "base.pt"))
    argv = _argv(small_list, base, tmp_path / "out", "--models", "M_clean", "M_PGD")
    models = tmp_path / "out" / "models"

    def sigterm_in_m_pgd(self, epoch, index, terms):
        if self.run_dir.endswith("M_PGD"):
            os.kill(os.getpid(), signal.SIGTERM)  # as SLURM or timeout would: the trainer stops after this batch

    monkeypatch.setattr(tr.Trainer, "on_batch_end", sigterm_in_m_pgd)
    code, err = run_main(robust_demo.main, argv, capsys)
    assert code == 128 + signal.SIGTERM
    assert err.strip().splitlines()[-1].startswith("robust_demo.py: stopped by SIGTERM")
    assert json.loads((models / "M_clean" / "robust_demo.json").read_text())["finished"]
    assert not json.loads((models / "M_PGD" / "robust_demo.json").read_text())["finished"]
    assert not (tmp_path / "out" / "table6").exists()  # the unfinished model is not evaluated
    finished = models / "M_clean" / "model_latest.pt"
    stamp = finished.stat().st_mtime_ns

    monkeypatch.undo()
    trained = []
    real = training.run_training
    monkeypatch.setattr(training, "run_training", lambda job: trained.append(os.path.basename(job.run_dir)) or real(job))
    code, err = run_main(robust_demo.main, argv, capsys)
    assert code == 0, err
    assert trained == ["M_PGD"] and finished.stat().st_mtime_ns == stamp
    cells = json.loads((tmp_path / "out" / "table6" / "sweep.json").read_text())["cells"]
    assert len(cells) == 2 * 6 and {c["status"] for c in cells} == {"done"}
    assert {c["label"] for c in cells} == {"PGD", "FGSM", "BIM", "VAFA", "VAFA clip", "APGD"}

    code, err = run_main(robust_demo.main, argv, capsys)  # everything finished: nothing runs again
    assert code == 0, err
    assert trained == ["M_PGD"]
    cells = json.loads((tmp_path / "out" / "table6" / "sweep.json").read_text())["cells"]
    assert {c["status"] for c in cells} == {"reused"}

    make_tiny_checkpoint(base, seed=1)  # another base model: the finished ones are not its fine-tunings
    code, err = run_main(robust_demo.main, argv, capsys)
    assert code == 2 and trained == ["M_PGD"]
    assert err.strip().splitlines()[-1].startswith("robust_demo.py: error:") and "base checkpoint content" in err


def test_largest_block_is_the_papers_32_where_it_fits(robust_demo):
    assert robust_demo.largest_block((96, 96, 96)) == 32
    assert robust_demo.largest_block((48, 48, 32)) == 16
    assert robust_demo.largest_block((32, 32, 16)) == 16
    assert robust_demo.largest_block((40, 40, 24)) == 8


def test_results_of_an_earlier_model_of_the_same_name_are_refused(robust_demo, tmp_path):
    """A model trained again (other weights, same path) must not inherit the old model's evaluation cells."""
    checkpoint = tmp_path / "model_latest.pt"
    checkpoint.write_bytes(b"new weights")
    out = tmp_path / "table6"
    (out / "runs" / "m_pgd_pgd").mkdir(parents=True)
    (out / "models.json").write_text(json.dumps({"M_PGD": robust_demo.sha256(__file__)}))  # other content
    args, _ = robust_demo.parse_args(["--pretrained_path", "base.pt"])
    with pytest.raises(robust_demo.UserError, match="earlier M_PGD"):
        robust_demo.evaluate({"M_PGD": str(checkpoint)}, [], args, 16, str(out))
    assert json.loads((out / "models.json").read_text())["M_PGD"] == robust_demo.sha256(__file__)  # left as it was
