"""The search a user gets with no flags is the authors': second order, their learning-rate schedule,
true fp32 in the unrolled passes; settings that cannot work are refused before any work."""

import json
import math

import pytest
import torch
import torch.nn.functional as F
from test_search import SYNTH, run_first_epochs, tiny

from dsara import DsaraError
from dsara.cli import main
from dsara.search import SearchConfig, run
from dsara.search.loop import Search, search_lr


def test_the_defaults_are_the_authors_search():
    cfg = SearchConfig()
    assert cfg.order == "second"  # their train_search.py: --unrolled, "we only implement" it
    assert cfg.precision == "auto" and not _auto_is_bf16()
    assert (cfg.epochs, cfg.batch_size, cfg.lr, cfg.lr_min, cfg.arch_lr) == (50, 32, 0.025,
                                                                           0.001, 3e-4)
    assert cfg.lr_epoch_offset == 1 and cfg.stage1 == 21


def _auto_is_bf16() -> bool:
    from dsara.utils.device import use_bf16

    return use_bf16("auto", torch.device("cuda")) or use_bf16("auto", torch.device("cpu"))


def test_learning_rate_follows_the_authors_scheduler_stepped_before_each_epoch():
    """PyTorch 1.2's CosineAnnealingLR stepped at the start of epoch e gives lr(e + 1)."""
    cfg = SearchConfig(epochs=50)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(
        torch.optim.SGD([torch.zeros(1, requires_grad=True)], cfg.lr), 50, eta_min=cfg.lr_min)
    textbook = []
    for _ in range(51):
        textbook.append(sched.get_last_lr()[0])
        sched.optimizer.step()
        sched.step()
    for e in range(50):
        assert search_lr(cfg, e) == pytest.approx(textbook[e + 1], rel=1e-12)
    assert search_lr(cfg, 49) == pytest.approx(cfg.lr_min)  # the last epoch at lr_min
    legacy = SearchConfig(epochs=50, lr_epoch_offset=0)
    assert [search_lr(legacy, e) for e in range(50)] == pytest.approx(textbook[:50], rel=1e-12)


def test_the_search_trains_each_epoch_at_its_learning_rate(tmp_path):
    cfg = tiny(tmp_path, epochs=3, stage1_epochs=1, max_steps=1)
    history = run(cfg).history
    assert [r["lr_w"] for r in history] == pytest.approx([search_lr(cfg, e) for e in range(3)])
    assert history[-1]["lr_w"] == pytest.approx(cfg.lr_min)


def test_a_run_saved_before_the_offset_existed_resumes_on_its_own_schedule(tmp_path):
    cfg = tiny(tmp_path, epochs=3, max_steps=1)
    run_first_epochs(cfg, epochs_done=1)
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    del saved["lr_epoch_offset"]  # as dsara wrote it before this field
    (tmp_path / "run" / "config.json").write_text(json.dumps(saved))
    assert main(["search", "--resume", str(tmp_path / "run")]) == 0
    history = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    old = SearchConfig(**{**cfg.to_dict(), "lr_epoch_offset": 0, "arch_betas": (0.5, 0.999)})
    # the resumed epochs 2 and 3 (the first ran before the edit)
    assert [r["lr_w"] for r in history[1:]] == pytest.approx([search_lr(old, e) for e in (1, 2)])
    assert history[-1]["lr_w"] > cfg.lr_min


def test_an_old_cuda_search_in_precision_auto_continues_in_bf16():
    from dsara.search.resume import legacy_precision

    old = {"config": {"precision": "auto"}, "device_type": "cuda"}
    cfg = SearchConfig()
    legacy_precision(old, cfg)
    assert cfg.precision == "bf16"  # what auto meant when it began
    for state in ({"config": {"precision": "auto", "lr_epoch_offset": 1}, "device_type": "cuda"},
                  {"config": {"precision": "auto"}, "device_type": "cpu"}):
        cfg = SearchConfig()
        legacy_precision(state, cfg)
        assert cfg.precision == "auto"


@pytest.mark.parametrize("settings, says", [
    ({"weight_method": "fgsm-rs", "order": "first"}, "fgsm-rs takes exactly one attack step"),
    ({"weight_method": "trades"}, "use --order first with it"),
])
def test_settings_that_cannot_work_are_refused_before_any_work(settings, says):
    with pytest.raises(DsaraError, match=says):
        SearchConfig(**settings).validate()
    SearchConfig(**{**settings, "order": "first", "pgd_steps": 1}).validate()  # the fix works


def test_cli_refuses_them_in_one_line(tmp_path, capsys):
    code = main(["search", "--space", "tiny", "--dataset", "synthetic", "--out",
                 str(tmp_path / "r"), "--set", "weight_method=mart"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "--order first" in err
    assert not (tmp_path / "r").exists()  # refused before anything was written


def _tf32_flags() -> tuple[bool, bool]:
    b = torch.backends
    try:
        return b.cuda.matmul.allow_tf32, b.cudnn.allow_tf32
    except RuntimeError:  # the fp32_precision API is in use
        return (b.cuda.matmul.fp32_precision == "tf32", b.cudnn.conv.fp32_precision == "tf32")


def test_every_unrolled_pass_runs_with_tf32_off_and_the_flags_come_back(tmp_path):
    """cuDNN's default TF32 (10-bit mantissa) is coarser than the ~1e-5 finite-difference shifts:
    every pass of the second-order update runs with TF32 off, the rest as the user set it."""
    cfg = tiny(tmp_path, order="second", pgd_steps=1, batch_size=8).validate()
    search = Search(cfg)
    seen = []

    def spy(module, inputs, logits):
        seen.append(("fwd", _tf32_flags()))
        if logits.requires_grad:  # the backward through this forward
            logits.register_hook(lambda g: seen.append(("bwd", _tf32_flags())))

    search.model.register_forward_hook(spy)
    b = torch.backends
    saved = _tf32_flags()
    b.cuda.matmul.allow_tf32 = b.cudnn.allow_tf32 = True
    try:
        batches = next(zip(search.train.epoch(0), search.val.epoch(0)))
        search.step(*batches, stage=2)
        after = _tf32_flags()
    finally:
        b.cuda.matmul.allow_tf32, b.cudnn.allow_tf32 = saved
    off = [kind for kind, flags in seen if flags == (False, False)]
    # the train-batch gradient, then for g_adv and g_nat each: L_val at w', L_train at w+ and w-
    assert off.count("fwd") == 7, seen
    assert len(off) == 7 + off.count("bwd") and off.count("bwd") >= 1
    assert all(flags == (True, True) for kind, flags in seen if (kind, flags) not in
               [(k, (False, False)) for k in ("fwd", "bwd")])
    assert sum(flags == (True, True) for _, flags in seen) >= 3  # PGD, alpha stats, weight step
    assert after == (True, True)


def test_finite_difference_radius_is_computed_in_the_weights_dtype(tmp_path):
    """In float64 the unrolled alpha gradient matches a float64 central difference of the exact
    Hessian-vector product closely only if R is not rounded through float32."""
    from dsara.search.steps import _norm

    t = [torch.tensor([1e-8, 3.0], dtype=torch.float64), torch.tensor([4.0], dtype=torch.float64)]
    n = _norm(t)
    assert n.dtype == torch.float64 and n.item() == math.sqrt(1e-16 + 9 + 16)


def _unrolled_alpha_grad(search: Search, batches) -> torch.Tensor:
    from dsara.search.steps import make_unrolled

    (x_t, y_t), (x_v, y_v) = batches
    unrolled = make_unrolled(search.model, x_t, y_t, search.w_opt, search.cfg)
    g = unrolled(lambda ctx: F.cross_entropy(search.model(x_v).float(), y_v))
    return torch.cat([t.flatten() for t in g])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_unrolled_alpha_gradient_with_tf32_allowed_matches_float64_on_cuda(tmp_path):
    """On Ampere/Hopper, TF32 allowed everywhere else: the unrolled alpha gradient in fp32 agrees
    with a float64 reference to cosine >= 0.99."""
    cfg = tiny(tmp_path, order="second", pgd_steps=0, batch_size=32, device="cuda",
               synthetic=SYNTH | {"image_size": 16, "n_train": 128}).validate()
    search = Search(cfg)
    batches = [tuple(t.cuda() for t in b) for b in next(zip(search.train.epoch(0),
                                                            search.val.epoch(0)))]
    b = torch.backends
    saved = b.cuda.matmul.allow_tf32, b.cudnn.allow_tf32
    b.cuda.matmul.allow_tf32 = b.cudnn.allow_tf32 = True
    try:
        fp32 = _unrolled_alpha_grad(search, batches)
        search.model.double()
        ref = _unrolled_alpha_grad(search, [(x.double(), y) for x, y in batches])
    finally:
        b.cuda.matmul.allow_tf32, b.cudnn.allow_tf32 = saved
    cosine = F.cosine_similarity(fp32.double(), ref, dim=0).item()
    print(f"TF32-allowed unrolled alpha gradient vs float64: cosine {cosine:.6f}")
    assert cosine >= 0.99
