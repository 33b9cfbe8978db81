"""The training benchmark: both paths do the same arithmetic, and a CPU smoke run of the script."""

import copy
import json
from pathlib import Path

import pytest
import torch

from dsara.arch.build import build_model
from dsara.bench.train import OptimizedTrainStep, ReferenceTrainStep, main, reference_trades_attack
from dsara.train.losses import AdvParams, trades_objective


def _batches(n: int, size: int = 16):
    g = torch.Generator().manual_seed(1)
    return [(torch.rand(6, 3, size, size, generator=g), torch.randint(0, 10, (6,), generator=g))
            for _ in range(n)]


@pytest.mark.parametrize("arch", ["ARNAS", "resnet_tiny"])
def test_optimized_and_reference_steps_follow_the_same_loss_trajectory_in_fp32(arch):
    torch.manual_seed(0)
    base = build_model(arch, cells=5, channels=4) if arch == "ARNAS" else build_model(arch)
    aux = 0.4 if getattr(base, "has_auxiliary", False) else 0.0
    params = AdvParams(eps=8 / 255, step_size=2 / 255, steps=3, aux_weight=aux)
    cpu = torch.device("cpu")
    fast = OptimizedTrainStep(copy.deepcopy(base), None, 6, "pgd-at", params, cpu, "fp32", "off")
    ref = ReferenceTrainStep(copy.deepcopy(base), None, 6, "pgd-at", params, cpu)
    losses = [(fast.step(x, y).item(), ref.step(x, y).item()) for x, y in _batches(4)]
    ours, theirs = zip(*losses)
    assert ours == pytest.approx(theirs, rel=1e-4, abs=1e-5)
    assert len(set(ours)) == len(ours)  # the steps moved the weights
    theirs_state = ref.model.state_dict()
    for name, a in fast.model.state_dict().items():
        # the auxiliary head's BatchNorm running statistics differ by design: dsara skips the
        # head in attack forwards; it only ever runs in train mode, so they are never used
        if not (name.startswith("auxiliary_head") and ("running" in name or "batches" in name)):
            assert torch.allclose(a.float(), theirs_state[name].float(), atol=1e-4), name


def test_reference_trades_objective_equals_dsaras_on_the_same_adversarial_batch():
    torch.manual_seed(0)
    model = build_model("resnet_tiny").train()
    params = AdvParams(eps=8 / 255, step_size=2 / 255, steps=2, beta=6.0)
    ref = ReferenceTrainStep(model, None, 6, "trades", params, torch.device("cpu"))
    x, y = _batches(1)[0]
    model.eval()
    x_adv = reference_trades_attack(model, x, params, torch.Generator().manual_seed(0))
    model.train()
    assert (x_adv - x).abs().max() <= params.eps + 1e-6 and 0 <= x_adv.min() <= x_adv.max() <= 1
    theirs = ref._loss(x, x_adv, y)
    ours, _ = trades_objective(model(x), model(x_adv), y, params.beta)
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-5)
    assert theirs.item() != pytest.approx(ref._loss(x, x, y).item())  # the KL term is live


def test_cpu_smoke_run_reports_both_paths_the_ratio_and_the_eval_batch(tmp_path):
    out, md = tmp_path / "train.json", tmp_path / "train.md"
    code = main(["--device", "cpu", "--size", "small", "--model", "resnet18", "--method",
                 "pgd-at", "--batch", "4", "--steps", "2", "--warmup", "0", "--pgd-steps", "1",
                 "--eval-steps", "1", "--precision", "fp32", "--precision", "bf16",
                 "--profile", "3", "--json", str(out), "--markdown", str(md)])
    assert code == 0
    report = json.loads(out.read_text())
    cases = {(c["kind"], c["path"], c["dtype"]) for c in report["cases"]}
    assert cases == {("train", "optimized", "fp32"), ("train", "optimized", "bf16 autocast"),
                     ("train", "reference", "fp32"), ("eval", "optimized", "fp32"),
                     ("eval", "reference", "fp32")}
    for c in report["cases"]:
        assert 0 < c["ms_q1"] <= c["ms_median"] <= c["ms_q3"]
        assert c["images_per_s"] == pytest.approx(4 / (c["ms_median"] / 1e3))
    rows = report["summary"]
    assert len(rows) == 3 and all(r["speedup"] > 0 and r["optimized_hours"] > 0 for r in rows)
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():  # the probe agrees with the kernel's CPU flags
        flags = cpuinfo.read_text()
        assert report["cpu_bf16"] == ("avx512_bf16" in flags or "amx_tile" in flags)
    assert "| train | resnet18 | pgd-at | reference | 4 |" in md.read_text()
    top = [c["top_ops"] for c in report["cases"] if "top_ops" in c]
    assert len(top) == 2 and all(len(t) == 3 and t[0]["self_ms"] >= t[2]["self_ms"] for t in top)
    assert any("conv" in o["op"] for t in top for o in t)


def test_unknown_model_is_one_line_error(capsys):
    assert main(["--device", "cpu", "--size", "small", "--model", "arnas", "--batch", "0"]) == 2
    assert "batches >= 1" in capsys.readouterr().err


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_training_step_never_syncs_with_the_host_on_cuda():
    from dsara.data.datasets import SyntheticConfig, load_dataset

    cuda = torch.device("cuda")
    model = build_model("ARNAS", cells=5, channels=8)
    params = AdvParams(eps=8 / 255, step_size=2 / 255, steps=2, aux_weight=0.4)
    train, _, _ = load_dataset("synthetic", synthetic=SyntheticConfig(n_train=128))
    for method in ("pgd-at", "trades"):
        step = OptimizedTrainStep(copy.deepcopy(model), train, 16, method, params, cuda)
        assert step.bf16 and step.layout == "channels_last"  # auto on CUDA
        for _ in range(3):  # warm-up: cuDNN autotuning, optimizer state
            step()
        torch.cuda.synchronize()
        before = [p.detach().clone() for p in step.model.parameters()]
        torch.cuda.set_sync_debug_mode("error")  # any host sync inside the step raises
        try:
            step()
        finally:
            torch.cuda.set_sync_debug_mode(0)
        assert any(not torch.equal(a, b) for a, b in zip(before, step.model.parameters()))


def test_round_robin_takes_the_paths_in_turns_after_their_warmup():
    from dsara.bench.train import round_robin

    calls = []
    paths = [lambda: calls.append("a"), lambda: calls.append("b")]
    times = round_robin(paths, warmup=1, steps=3, device=torch.device("cpu"))
    assert calls == ["a", "b"] + ["a", "b"] * 3
    assert [len(t) for t in times] == [3, 3] and all(ms >= 0 for t in times for ms in t)
