"""Unit tests of trainer.py on a tiny UNETR and random tensors (CPU)."""

from __future__ import annotations

import copy
import math
import os
import signal

import pytest
import torch

import training.trainer as tr
from data import sampling
from engine import jobs
from training import optim, run as training
from utils import seeding
from utils.errors import UserError
from networks import build_model
from networks.checkpoint import read_checkpoint, save_checkpoint
from networks.precision import training_precision
from run_normal_or_adv_training import parse_args
from training.losses import build_dice_ce, frequency_consistency_loss


def run_folder(args):
    """``(run folder, checkpoint to resume)`` the training script derives from its flags."""
    job = jobs.training_job(args)
    return job.run_dir, job.resume_from


def make_trainer(args, model, device, **kwargs):
    """The trainer the training script builds for these flags (loss, optimiser, schedule, attack)."""
    return training.build_trainer(jobs.training_job(args), model, device, **kwargs)

ROI = (16, 16, 16)
CLASSES = 3
TINY = ["--feature_size", "8", "--hidden_size", "48", "--mlp_dim", "96", "--num_heads", "4",
        "--roi_x", "16", "--roi_y", "16", "--roi_z", "16", "--out_channels", str(CLASSES)]


pytestmark = pytest.mark.usefixtures("one_thread")


def make_args(*extra: str):
    return parse_args(["--data_dir", "unused", "--debugging", "--device", "cpu", *TINY, *extra])


def tiny_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model("unet-r", in_channels=1, out_channels=CLASSES, img_size=ROI, feature_size=8, hidden_size=48,
                       mlp_dim=96, num_heads=4)


def fixed_batch(seed: int = 0, batch: int = 2) -> dict:
    g = torch.Generator().manual_seed(seed)
    labels = torch.zeros(batch, 1, *ROI)
    labels[:, :, 4:12, 4:12, 4:12] = 1
    labels[:, :, 6:10, 6:10, 6:10] = 2
    images = (0.2 + 0.3 * labels + 0.05 * torch.rand(batch, 1, *ROI, generator=g)).clamp(0, 1)
    return {"image": images, "label": labels}


# --------------------------------------------------------------------------- schedule and optimiser


def test_warmup_cosine_follows_the_release_closed_form():
    f = lambda e: optim.warmup_cosine_factor(e, warmup_epochs=5, max_epochs=15)  # noqa: E731
    assert f(0) == 0.0  # the release trains epoch 0 at learning rate 0
    assert f(2) == pytest.approx(0.5) and f(4) == pytest.approx(1.0)
    assert f(5) == pytest.approx(1.0) and f(10) == pytest.approx(0.5) and f(15) == pytest.approx(0.0, abs=1e-12)
    # guards where the release divides by zero
    assert optim.warmup_cosine_factor(0, 1, 10) == 0.0 and optim.warmup_cosine_factor(1, 1, 10) == pytest.approx(1.0)
    assert optim.warmup_cosine_factor(3, 10, 10) == pytest.approx(3 / 9) and optim.warmup_cosine_factor(12, 10, 10) == 1.0
    assert optim.warmup_cosine_factor(0, 0, 4) == 1.0


def test_schedules_step_per_epoch_and_match_torch_cosine():
    args = make_args("--lrschedule", "cosine_anneal", "--max_epochs", "7", "--optim_lr", "0.1")
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    ours = optim.build_scheduler(jobs.training_job(args).optim, opt)
    ref_opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    ref = torch.optim.lr_scheduler.CosineAnnealingLR(ref_opt, T_max=7)
    for _ in range(7):
        assert opt.param_groups[0]["lr"] == pytest.approx(ref_opt.param_groups[0]["lr"], abs=1e-12)
        opt.step(), ref_opt.step(), ours.step(), ref.step()
    warm_opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    warm = optim.build_scheduler(jobs.training_job(make_args("--warmup_epochs", "3", "--max_epochs", "9")).optim, warm_opt)
    lrs = []
    for _ in range(4):
        lrs.append(warm_opt.param_groups[0]["lr"])
        warm_opt.step(), warm.step()
    assert lrs == pytest.approx([0.0, 0.5, 1.0, 1.0])
    assert optim.build_scheduler(jobs.training_job(make_args("--lrschedule", "none")).optim, opt) is None


def test_scheduler_state_round_trips_without_callables():
    args = make_args("--warmup_epochs", "3", "--max_epochs", "9")
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([p], lr=1.0)
    sched = optim.build_scheduler(jobs.training_job(args).optim, opt)
    for _ in range(4):
        opt.step(), sched.step()
    state = sched.state_dict()
    assert state["lr_lambdas"] == [None] and state["last_epoch"] == 4
    opt2 = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched2 = optim.build_scheduler(jobs.training_job(args).optim, opt2)
    opt2.load_state_dict(opt.state_dict())
    sched2.load_state_dict(state)
    opt2.step(), sched2.step(), opt.step(), sched.step()
    assert opt2.param_groups[0]["lr"] == pytest.approx(opt.param_groups[0]["lr"])


@pytest.mark.parametrize("name, cls", [("adamw", torch.optim.AdamW), ("adam", torch.optim.Adam), ("sgd", torch.optim.SGD)])
def test_optimisers_take_the_release_hyperparameters(name, cls):
    args = make_args("--optim_name", name, "--optim_lr", "0.01", "--reg_weight", "0.001")
    opt = optim.build_optimizer(jobs.training_job(args).optim, [torch.nn.Parameter(torch.zeros(1))])
    group = opt.param_groups[0]
    assert isinstance(opt, cls) and group["lr"] == 0.01 and group["weight_decay"] == 0.001
    if name == "sgd":
        assert group["nesterov"] and group["momentum"] == 0.99


def test_training_precision_defaults_to_the_release_mixed_precision():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert training_precision(cpu, True, None) == "fp32"  # the release's CUDA autocast did nothing on CPU
    assert training_precision(cuda, True, None) == "fp16"  # the release: float16 with a gradient scaler
    assert training_precision(cuda, False, None) == "fp32"  # --noamp
    assert training_precision(cpu, True, "bf16") == "bf16"  # --precision wins
    assert training_precision(cuda, True, "bf16") == "bf16"


def test_noamp_with_a_half_precision_is_refused(capsys):
    with pytest.raises(SystemExit) as exit_info:
        make_args("--noamp", "--precision", "bf16")
    assert exit_info.value.code == 2
    assert "--noamp" in capsys.readouterr().err


def test_fp16_training_scales_the_loss_on_any_device():
    """float16 gradients underflow without loss scaling: the trainer's GradScaler is on under fp16."""
    trainer = make_trainer(make_args("--precision", "fp16", "--lrschedule", "constant", "--optim_lr", "1e-3"),
                           tiny_model(), torch.device("cpu"))
    assert trainer.precision == "fp16" and trainer.scaler.is_enabled()
    before = [p.detach().clone() for p in trainer.module.parameters()]
    terms = trainer.train_step(fixed_batch())
    assert math.isfinite(terms["loss"])
    assert trainer.scaler.get_scale() > 1  # the loss was scaled up before backward
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.module.parameters()))


def test_bf16_training_steps_run_the_model_in_bf16_and_the_attack_in_fp32_unless_asked():
    """The training passes follow --precision; the attack building X' too only when --precision is given."""
    seen = []

    def record(module, inputs, output):
        seen.append((module.training, output.dtype))

    for extra, attack_dtype in (([], torch.float32), (["--precision", "bf16"], torch.bfloat16)):
        args = make_args("--adv_training_mode", "--attack_name", "pgd", "--steps", "1", *extra)
        model = tiny_model()
        trainer = make_trainer(args, model, torch.device("cpu"))
        if not extra:
            trainer.precision = "bf16"  # the training passes alone in bf16
        seen.clear()
        handle = model.out.register_forward_hook(record)
        trainer.train_step(fixed_batch())
        handle.remove()
        assert (False, attack_dtype) in seen  # the attack's pass (eval mode)
        assert (True, torch.bfloat16) in seen  # the training pass
        assert trainer.scaler.is_enabled() is False


# --------------------------------------------------------------------------- data order


def test_epoch_sampler_is_reproducible_and_shards_without_overlap():
    a = list(sampling.EpochSampler(7, seed=3))
    s = sampling.EpochSampler(7, seed=3)
    assert list(s) == a  # epoch 0 again
    s.set_epoch(1)
    b = list(s)
    assert sorted(i for _, i in b) == list(range(7)) and b != a
    assert len({seed for seed, _ in a}) == 7  # one augmentation seed per sample
    shards = []
    for rank in range(3):
        sampler = sampling.EpochSampler(7, seed=3, rank=rank, world=3)
        sampler.set_epoch(1)
        shards.append([i for _, i in sampler])
        assert len(shards[-1]) == len(sampler) == 3
    assert set(sum(shards, [])) == set(range(7))  # padded to 9 by repetition, all cases covered


def test_epoch_seeded_dataset_seeds_the_transform_per_key():
    class Transform:
        def set_random_state(self, seed):
            self.seed = seed

    class Data:
        transform = Transform()

        def __len__(self):
            return 2

        def __getitem__(self, index):
            return index, self.transform.seed

    ds = sampling.EpochSeededDataset(Data())
    assert ds[(11, 1)] == (1, 11) and ds[(5, 0)] == (0, 5) and len(ds) == 2


# --------------------------------------------------------------------------- steps


def test_build_trainer_picks_the_class_from_the_flags():
    model = tiny_model()
    assert type(make_trainer(make_args(), model, torch.device("cpu"))) is tr.Trainer
    assert type(make_trainer(make_args("--adv_training_mode"), model, torch.device("cpu"))) is tr.AdversarialTrainer
    vaft = make_trainer(make_args("--adv_training_mode", "--freq_reg_mode"), model, torch.device("cpu"))
    assert type(vaft) is tr.VAFTTrainer


def test_fused_dice_ce_flag_reaches_training_and_its_attack():
    from monai.losses import DiceCELoss

    from training.losses import FusedDiceCE

    model = tiny_model()
    for flags, kind in (((), DiceCELoss), (("--fused_dice_ce",), FusedDiceCE)):
        vaft = make_trainer(make_args("--adv_training_mode", "--freq_reg_mode", *flags), model, torch.device("cpu"))
        assert type(vaft.loss_fn.loss) is kind
        assert vaft.attack.loss_fn is vaft.loss_fn


@pytest.mark.parametrize("flags", [(), ("--adv_training_mode", "--freq_reg_mode", "--attack_name", "gn")],
                         ids=["normal", "vaft"])
def test_train_step_lowers_the_loss_on_a_fixed_batch(flags):
    args = make_args("--optim_name", "adam", "--optim_lr", "3e-3", "--lrschedule", "constant", *flags)
    trainer = make_trainer(args, tiny_model(), torch.device("cpu"))
    batch = fixed_batch()
    torch.manual_seed(0)
    losses = [trainer.train_step(batch)["loss"] for _ in range(6)]
    assert losses[-1] < losses[0], losses
    assert all(math.isfinite(v) for v in losses)


def _captured_attack(trainer):
    """Wrap the trainer's attack to keep the adversarial batch it produced."""
    seen = {}
    attack = trainer.attack

    def wrapped(images, labels):
        seen["labels"] = labels
        seen["adv"] = attack(images, labels)
        return seen["adv"]

    trainer.attack = wrapped
    return seen


@pytest.mark.parametrize("mode", ["adversarial", "vaft"])
def test_adversarial_step_leaves_only_the_training_gradients(mode):
    flags = ["--adv_training_mode", "--attack_name", "pgd", "--steps", "2", "--eps", "8"]
    if mode == "vaft":
        flags += ["--freq_reg_mode", "--freq_reg_weight", "0.5"]
    # lr 0, no weight decay: the step leaves the weights as they were, so the gradients can be recomputed
    args = make_args("--optim_name", "sgd", "--optim_lr", "0", "--reg_weight", "0", "--lrschedule", "constant", *flags)
    trainer = make_trainer(args, tiny_model(), torch.device("cpu"))
    reference = copy.deepcopy(trainer.module)
    trainer.module.eval()  # the step must put it back into train mode
    seen = _captured_attack(trainer)
    batch = fixed_batch()
    trainer.train_step(batch)

    assert all(m.training for m in trainer.module.modules())
    images, labels = batch["image"], batch["label"]
    assert torch.equal(seen["labels"], labels)
    adv = seen["adv"]
    assert not adv.requires_grad and (adv - images).abs().max() <= 8 / 255 + 1e-6
    loss_fn = build_dice_ce()
    reference.train()
    if mode == "vaft":
        clean, attacked = reference(images), reference(adv)
        loss = loss_fn(clean, labels) + loss_fn(attacked, labels) + 0.5 * frequency_consistency_loss(clean, attacked)
    else:
        loss = loss_fn(reference(adv), labels)
    loss.backward()
    for (name, p), q in zip(trainer.module.named_parameters(), reference.parameters()):
        if q.grad is None:
            assert p.grad is None or not p.grad.any(), name
        else:
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_targeted_training_attacks_towards_the_target_class():
    args = make_args("--adv_training_mode", "--attack_name", "fgsm", "--targeted", "--target_class", "2",
                     "--optim_lr", "0", "--reg_weight", "0")
    trainer = make_trainer(args, tiny_model(), torch.device("cpu"))
    seen = _captured_attack(trainer)
    trainer.train_step(fixed_batch())
    assert bool((seen["labels"] == 2).all())


def test_validate_reports_the_mean_case_dice():
    args = make_args("--val_attack", "--attack_name", "gn", "--val_attack_cases", "1", "--infer_overlap", "0")
    batches = [fixed_batch(seed, batch=1) for seed in range(2)]
    trainer = make_trainer(args, tiny_model(), torch.device("cpu"), val_loader=batches)
    out = trainer.validate(0)
    assert 0.0 <= out["val_dice"] <= 1.0 and 0.0 <= out["val_dice_adv"] <= 1.0
    from utils.metrics import class_mean, dice_per_class

    expected = [class_mean(dice_per_class(trainer.predict(b["image"]), b["label"], CLASSES)) for b in batches]
    assert out["val_dice"] == pytest.approx(sum(expected) / 2)


# --------------------------------------------------------------------------- checkpoints and folders


def test_checkpoint_loads_with_weights_only_and_restores_the_state(tmp_path):
    args = make_args("--optim_name", "adamw", "--lrschedule", "cosine_anneal", "--max_epochs", "4")
    trainer = make_trainer(args, tiny_model(), torch.device("cpu"))
    trainer.train_step(fixed_batch())
    trainer.scheduler.step()
    trainer.best_acc, trainer.last_acc = 0.25, 0.2
    path = str(tmp_path / "model_latest.pt")
    save_checkpoint(trainer.checkpoint(0), path)
    ckpt = read_checkpoint(path)  # torch.load(weights_only=True)
    assert {"epoch", "epoch_acc", "best_acc", "model_state_dict", "optimizer_state_dict", "scheduler_state_dict",
            "scaler_state_dict", "rng_state", "args"} <= set(ckpt)
    assert ckpt["args"]["optim_name"] == "adamw" and not any(k.startswith("module.") for k in ckpt["model_state_dict"])

    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    state = seeding.rng_state()
    torch.rand(3)
    seeding.set_rng_state(state)
    assert torch.equal(torch.rand(3), expected)

    other = make_trainer(args, tiny_model(seed=1), torch.device("cpu"))
    other.restore(path)
    assert other.start_epoch == 1 and other.best_acc == 0.25 and other.last_acc == 0.2
    assert other.optimizer.param_groups[0]["lr"] == pytest.approx(trainer.optimizer.param_groups[0]["lr"])
    assert other.scheduler.last_epoch == 1
    for a, b in zip(trainer.module.state_dict().values(), other.module.state_dict().values()):
        assert torch.equal(a, b)
    restarted = make_trainer(args, tiny_model(seed=1), torch.device("cpu"))
    restarted.restore(path, restart=True)
    assert restarted.start_epoch == 0 and restarted.best_acc == 0.0
    # another optimiser cannot continue this state (it would fail later with KeyError 'momentum')
    sgd = make_trainer(make_args("--optim_name", "sgd"), tiny_model(seed=1), torch.device("cpu"))
    with pytest.raises(UserError, match="written by another optimiser than --optim_name sgd"):
        sgd.restore(path)


def test_metrics_rows_from_the_resumed_epoch_on_are_dropped(tmp_path):
    path = tmp_path / "metrics.csv"
    path.write_text("epoch,loss,val_dice\n0,1.0,\n1,0.9,0.5\n2,0.8,\n")
    rows = tr.read_metrics_rows(str(path), before_epoch=2)
    # an older run's fraction column becomes the % column
    assert [r["epoch"] for r in rows] == ["0", "1"] and float(rows[1]["val_dice_pct"]) == 50.0
    assert "val_dice" not in rows[1] and rows[0]["val_dice_pct"] == ""
    assert tr.read_metrics_rows(str(tmp_path / "missing.csv"), 3) == []


def test_run_folder_follows_the_release_layout(tmp_path):
    out = str(tmp_path)
    attack = ["--attack_name", "pgd", "--steps", "3", "--eps", "4"]
    normal = parse_args(["--data_dir", "d", "--save_model_dir", out])
    assert run_folder(normal) == (out, None)
    adv = parse_args(["--data_dir", "d", "--save_model_dir", out, "--adv_training_mode", *attack])
    assert run_folder(adv) == (os.path.join(out, "pgd_alpha_0.01_eps_4.0_i_3"), None)
    flat = parse_args(["--data_dir", "d", "--save_model_dir", out, "--adv_training_mode", "--no_sub_dir_model", *attack])
    assert run_folder(flat)[0] == out
    resume = parse_args(["--data_dir", "d", "--resume", "--resume_best", "--checkpoint_dir", out, "--adv_training_mode",
                         *attack])
    sub = os.path.join(out, "pgd_alpha_0.01_eps_4.0_i_3")
    assert run_folder(resume) == (sub, os.path.join(sub, "model_best.pt"))
    restart = parse_args(["--data_dir", "d", "--resume", "--resume_latest", "--resume_but_restart", "--checkpoint_dir",
                          out, "--save_model_dir", str(tmp_path / "new")])
    assert run_folder(restart) == (str(tmp_path / "new"), os.path.join(out, "model_latest.pt"))
    debug = parse_args(["--data_dir", "d", "--debugging"])
    assert run_folder(debug) == (None, None)


def test_signal_handlers_set_the_stop_flag_and_are_restored():
    trainer = make_trainer(make_args(), tiny_model(), torch.device("cpu"))
    before = signal.getsignal(signal.SIGUSR1)
    previous = trainer.install_signal_handlers()
    try:
        assert not trainer.stop_requested()
        os.kill(os.getpid(), signal.SIGUSR1)
        assert trainer.stop_requested() and trainer.stop_signal == "SIGUSR1"
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    assert signal.getsignal(signal.SIGUSR1) is before


def test_release_checkpoint_resumes_at_the_next_epoch_with_the_closed_form_rate(tmp_path):
    """The release saved its own scheduler's state before stepping it: the rate comes from the flags."""
    model = tiny_model()
    path = str(tmp_path / "model_latest.pt")
    release_scheduler = {"warmup_epochs": 50, "max_epochs": 5000, "warmup_start_lr": 0.0, "eta_min": 0.0,
                         "base_lrs": [1e-4], "last_epoch": 9}
    save_checkpoint({"epoch": 9, "best_acc": 0.7, "epoch_acc": 0.6, "model_state_dict": model.state_dict(),
                     "scheduler_state_dict": release_scheduler}, path)
    trainer = make_trainer(make_args(), tiny_model(seed=1), torch.device("cpu"))
    trainer.restore(path)
    assert trainer.start_epoch == 10 and trainer.best_acc == pytest.approx(0.7)
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(1e-4 * 10 / 49)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_amp_steps_on_cuda():
    args = parse_args(["--data_dir", "unused", "--debugging", "--device", "cuda", *TINY, "--adv_training_mode",
                       "--freq_reg_mode", "--attack_name", "vafa-3d", "--steps", "2", "--block_size", "8", "8", "8",
                       "--lrschedule", "constant", "--optim_lr", "1e-3"])
    val = [{k: v.cuda() for k, v in fixed_batch(batch=1).items()}]
    trainer = make_trainer(args, tiny_model(), torch.device("cuda"), val_loader=val)
    assert trainer.precision == "fp16" and trainer.scaler.is_enabled()  # the release's float16 with its scaler
    batch = {k: v.cuda() for k, v in fixed_batch().items()}
    terms = [trainer.train_step(batch) for _ in range(3)]
    assert all(math.isfinite(v) for t in terms for v in t.values())
    assert set(terms[0]) == {"loss", "loss_clean", "loss_adv", "loss_freq"}
    assert 0.0 <= trainer.validate(0)["val_dice"] <= 1.0
