"""The DSARA search on CPU: tiny space, synthetic data."""

import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import torch.nn.functional as F

from dsara import DsaraError
from dsara.attacks.gradient import pgd
from dsara.cli import main
from dsara.search import SearchConfig, run
from dsara.search.mgda import combine, min_norm_gamma

SYNTH = {"n_train": 64, "n_test": 16, "image_size": 8, "noise": 0.1}


def tiny(tmp_path, name="run", **kw) -> SearchConfig:
    # first order keeps these tests fast; the default (second) has its own tests
    base = dict(space="tiny", dataset="synthetic", synthetic=SYNTH, epochs=2, stage1_epochs=1,
                batch_size=8, pgd_steps=2, step_size=4 / 255, arch_lr=3e-2, max_steps=3,
                order="first", device="cpu", out=str(tmp_path / name))
    return SearchConfig(**(base | kw))


def test_two_epoch_search_moves_alpha_and_writes_every_output(tmp_path):
    cfg = tiny(tmp_path)
    result = run(cfg)
    out = result.run_dir
    for name in ("config.json", "metrics.jsonl", "alpha_history.jsonl", "architecture.json",
                 "checkpoint.pt"):
        assert (out / name).exists(), name
    alphas = [json.loads(line) for line in (out / "alpha_history.jsonl").read_text().splitlines()]
    assert [a["epoch"] for a in alphas] == [0, 1, 2]
    first, last = alphas[0]["alphas"], alphas[-1]["alphas"]
    assert set(first) == {"accurate", "reduce", "robust"}
    for t in first:
        moved = torch.tensor(last[t]) - torch.tensor(first[t])
        assert moved.abs().max() > 1e-3, f"alpha of {t} did not move"
    records = result.history
    assert [r["stage"] for r in records] == [1, 2]  # stage 1 -> 2 at stage1_epochs
    assert records[0]["gamma_mean"] is None and 0 <= records[1]["gamma_mean"] <= 1
    for r in records:
        assert 0 <= r["val_pgd_acc"] <= 1 and 0 <= r["val_clean_acc"] <= 1
        assert set(r["alpha_entropy"]) == set(r["param_free"]) == {"accurate", "reduce", "robust"}
        assert r["images_per_s"] > 0 and math.isfinite(r["train_loss_adv"])
    arch = json.loads((out / "architecture.json").read_text())
    assert arch["genotype"] == records[-1]["genotype"]
    assert arch["provenance"]["space"] == "tiny"


@pytest.mark.parametrize("stage1,expected", [(0, [2, 2, 2]), (2, [1, 1, 2]), (3, [1, 1, 1])])
def test_stage_switches_at_the_configured_epoch(tmp_path, stage1, expected):
    result = run(tiny(tmp_path, epochs=3, stage1_epochs=stage1, max_steps=1, pgd_steps=1))
    assert [r["stage"] for r in result.history] == expected


def test_stage1_default_follows_the_authors_schedule():
    # ARNAS train_search.py: `if False:  #if epoch <= 20:`, i.e. epochs 0..20 = 21 of 50
    assert SearchConfig().stage1 == 21
    assert [SearchConfig(epochs=e).stage1 for e in (1, 2, 10, 20, 100)] == [0, 1, 4, 8, 42]
    assert SearchConfig(stage1_epochs=0).stage1 == 0  # the released code: stage 2 only


def test_gamma_matches_brute_force_min_norm_including_clipped_cases():
    g = torch.Generator().manual_seed(0)
    cases = [torch.randn(2, 6, generator=g) for _ in range(20)]
    cases += [torch.stack([torch.ones(6), 3 * torch.ones(6)]),  # clipped to gamma = 1
              torch.stack([3 * torch.ones(6), torch.ones(6)]),  # clipped to gamma = 0
              torch.stack([torch.ones(6), torch.ones(6)])]  # equal: any gamma, 0.5 returned
    grid = torch.linspace(0, 1, 20001)
    for g1, g2 in cases:
        norms = (grid[:, None] * g1 + (1 - grid[:, None]) * g2).norm(dim=1)
        gamma = float(min_norm_gamma(g1, g2))
        best = float(norms.min())
        got = float((gamma * g1 + (1 - gamma) * g2).norm())
        assert got <= best + 1e-5
        assert 0 <= gamma <= 1
    assert float(min_norm_gamma(torch.ones(6), 3 * torch.ones(6))) == 1.0
    assert float(min_norm_gamma(3 * torch.ones(6), torch.ones(6))) == 0.0


def test_combine_keeps_shapes_and_sum_ablation():
    a, b = [torch.ones(2, 3)], [torch.full((2, 3), 3.0)]
    direction, gamma = combine(a, b, "mgda")
    assert direction[0].shape == (2, 3) and float(gamma) == 1.0
    direction, gamma = combine(a, b, "sum")
    assert torch.equal(direction[0], torch.full((2, 3), 4.0)) and math.isnan(float(gamma))


def test_pgd_stays_in_the_ball_and_beats_clean_and_random_noise():
    import dsara

    torch.manual_seed(0)
    model = dsara.build_model("ARNAS", cells=5, channels=8, auxiliary=False).eval()
    x = torch.rand(16, 3, 16, 16)
    y = model(x).argmax(1)  # labels the model gets right: the clean loss is low
    eps = 8 / 255
    x_adv = pgd(model, x, y, eps, 2 / 255, 10)
    assert (x_adv - x).abs().max() <= eps + 1e-6
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    ce = torch.nn.functional.cross_entropy
    noise = (x + eps * torch.sign(torch.randn_like(x))).clamp(0, 1)
    with torch.no_grad():
        clean, adv, rand = ce(model(x), y), ce(model(x_adv), y), ce(model(noise), y)
    assert adv > clean and adv > rand


def test_resume_gives_the_same_alpha_and_genotype_as_a_straight_run(tmp_path):
    straight = run(tiny(tmp_path, "straight", epochs=3, stage1_epochs=1))
    part = tiny(tmp_path, "part", epochs=3, stage1_epochs=1)
    part_cfg = SearchConfig(**{**part.__dict__})
    run_first_epochs(part_cfg, epochs_done=1)
    resumed = run(tiny(tmp_path, "part", epochs=3, stage1_epochs=1), resume=True)
    assert resumed.resumed_from == 1
    a = torch.load(straight.run_dir / "checkpoint.pt", weights_only=True)["model"]
    b = torch.load(resumed.run_dir / "checkpoint.pt", weights_only=True)["model"]
    for t in ("accurate", "reduce", "robust"):
        torch.testing.assert_close(a[f"alphas.{t}"], b[f"alphas.{t}"], rtol=1e-5, atol=1e-6)
    assert straight.genotype == resumed.genotype
    assert [r["epoch"] for r in resumed.history] == [1, 2, 3]


def run_first_epochs(cfg: SearchConfig, epochs_done: int):
    """Run a search and stop it after `epochs_done` epochs, the way a kill would."""
    class Stop(Exception):
        pass

    def stop(record):
        if record["epoch"] == epochs_done:
            raise Stop

    with pytest.raises(Stop):
        run(cfg, callbacks=[stop])


def test_sigkill_mid_epoch_resumes_and_completes(tmp_path):
    out = tmp_path / "killed"
    args = ["--space", "tiny", "--dataset", "synthetic", "--epochs", "3", "--stage1-epochs", "1",
            "--batch-size", "8", "--pgd-steps", "2", "--device", "cpu", "--out", str(out),
            "--set", "synthetic.n_train=128", "--set", "synthetic.image_size=8",
            "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "dsara", "search", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 240
    while not (out / "checkpoint.pt").exists():  # the event: epoch 1 is checkpointed
        assert proc.poll() is None, proc.stdout.read()
        assert time.monotonic() < deadline, "no checkpoint within 240 s"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)  # at once: epoch 2 (of 3) has a whole epoch of work left
    proc.wait()
    done = torch.load(out / "checkpoint.pt", weights_only=True)["epoch"]
    assert 1 <= done < 3
    assert main(["search", "--resume", str(out), "--no-progress"]) == 0
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [1, 2, 3]


def test_second_order_and_sum_run(tmp_path):
    r = run(tiny(tmp_path, "second", order="second", combine="sum", epochs=2, stage1_epochs=1,
                 max_steps=1, pgd_steps=1))
    assert r.history[-1]["gamma_mean"] is None  # the sum ablation has no gamma
    assert all(math.isfinite(v) for v in r.history[-1]["alpha_entropy"].values())


@pytest.mark.parametrize("kw,needle", [
    ({"dataset": "imagenet22k"}, "unknown dataset"),
    ({"dataset": "cifar10", "data_root": "/nonexistent/dsara"}, "--download"),
    ({"eps": -0.1}, "eps must be >= 0"),
    ({"epochs": 2, "stage1_epochs": 3}, "stage1_epochs (3) must be between 0 and epochs (2)"),
    ({"batch_size": 4096}, "batch"),
])
def test_bad_input_gives_one_clear_line(tmp_path, kw, needle):
    with pytest.raises(DsaraError) as e:
        run(tiny(tmp_path, **kw))
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_nan_loss_stops_naming_the_epoch_and_keeps_the_last_good_checkpoint(tmp_path,
                                                                              monkeypatch):
    import dsara.search.loop as loop

    real = loop.weight_step
    calls = {"n": 0}

    def poisoned(*a, **k):
        calls["n"] += 1
        stats = real(*a, **k)
        if calls["n"] > 3:  # epoch 2 (3 steps per epoch)
            stats["train_loss_adv"] = torch.tensor(float("nan"))
        return stats

    monkeypatch.setattr(loop, "weight_step", poisoned)
    cfg = tiny(tmp_path, epochs=3)
    with pytest.raises(DsaraError, match="NaN or infinite in epoch 2; the last good checkpoint "
                                         r"\(epoch 1\) is kept"):
        run(cfg)
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert state["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_resume_with_another_space_is_refused(tmp_path, capsys):
    run_first_epochs(tiny(tmp_path), epochs_done=1)
    code = main(["search", "--resume", str(tmp_path / "run"), "--space", "tiny_darts"])
    assert code == 2
    err = capsys.readouterr().err
    assert "was made with space = 'tiny', not 'tiny_darts'" in err


def test_starting_over_an_existing_run_is_refused(tmp_path):
    run_first_epochs(tiny(tmp_path), epochs_done=1)
    with pytest.raises(DsaraError, match="already holds a search; continue it with --resume"):
        run(tiny(tmp_path))


def test_cli_search_with_space_override(tmp_path, capsys):
    out = tmp_path / "cli"
    code = main(["search", "--space", "tiny", "--dataset", "synthetic", "--epochs", "1",
                 "--batch-size", "8", "--pgd-steps", "1", "--max-steps", "1", "--device", "cpu",
                 "--set", "synthetic.n_train=64", "--set", "synthetic.image_size=8",
                 "--set", "stages.2.width=1.5", "--eps", "4/255", "--out", str(out), "--plots"])
    assert code == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["space_overrides"] == {"stages.2.width": 1.5}
    assert cfg["eps"] == pytest.approx(4 / 255)
    arch = json.loads((out / "architecture.json").read_text())
    assert arch["macro"]["stages"][2]["width"] == 1.5
    assert "architecture file:" in capsys.readouterr().out
    pngs = sorted(p.name for p in (out / "plots").glob("*.png"))
    assert {"architecture_accurate.png", "architecture_reduce.png", "architecture_robust.png",
            "search_curves.png", "alphas_robust.png"} <= set(pngs), pngs


def test_resume_of_a_checkpoint_with_other_tensors_is_one_line(tmp_path):
    """A run started before the space stopped normalizing holds `normalize.*` buffers."""
    cfg = tiny(tmp_path)
    run_first_epochs(cfg, epochs_done=1)
    path = tmp_path / "run" / "checkpoint.pt"
    state = torch.load(path, weights_only=True)
    state["model"]["normalize.mean"] = torch.zeros(1, 3, 1, 1)
    torch.save(state, path)
    with pytest.raises(DsaraError, match=r"1 tensors differ, e\.g\. 'normalize\.mean'"):
        run(cfg, resume=True)


def _alpha_direction(precision: str, tmp_path, stage: int, state=None):
    """The alpha gradient one second-order search step applies, at a given precision."""
    from dsara.search.loop import Search

    cfg = tiny(tmp_path, precision=precision, order="second", pgd_steps=0, batch_size=8,
               synthetic=SYNTH | {"image_size": 16}).validate()
    search = Search(cfg)
    if state is not None:
        search.model.load_state_dict(state)
    state = {k: v.clone() for k, v in search.model.state_dict().items()}
    batches = next(zip(search.train.epoch(0), search.val.epoch(0)))
    search.step(*batches, stage)
    return torch.cat([a.grad.flatten() for a in search.model.arch_parameters()]), state


@pytest.mark.parametrize("stage", [1, 2])
def test_second_order_alpha_gradient_under_bf16_matches_fp32(tmp_path, stage):
    """The finite differences shift the weights by ~1e-5, below bf16's spacing: they must not be
    computed under autocast (on today's code the cosine was about 0.2)."""
    fp32, state = _alpha_direction("fp32", tmp_path, stage)
    bf16, _ = _alpha_direction("bf16", tmp_path, stage, state)
    assert torch.isfinite(bf16).all() and bf16.norm() > 0
    assert F.cosine_similarity(bf16, fp32, dim=0) >= 0.99


@pytest.mark.parametrize("written_by", ["now", "before device_type was recorded"])
def test_resume_on_another_device_type_is_refused_unless_forced(tmp_path, capsys, written_by):
    cfg = tiny(tmp_path, epochs=2)
    run_first_epochs(cfg, epochs_done=1)
    path = tmp_path / "run" / "checkpoint.pt"
    state = torch.load(path, weights_only=True)
    if written_by == "now":
        state["device_type"] = "cuda"  # as a search on a GPU writes it
    else:  # an older checkpoint of an `auto` search on a CUDA machine: CUDA RNG states, no type
        state.pop("device_type", None)
        state["config"]["device"] = "auto"
        state["rng"]["cuda"] = [torch.get_rng_state()] * 2
    torch.save(state, path)
    capsys.readouterr()  # the first epoch's progress lines
    code = main(["search", "--resume", str(tmp_path / "run"), "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert "was searched on cuda and would continue on cpu, which changes channels_last on -> " \
           "off, the random streams" in err and "--force" in err
    assert json.loads((tmp_path / "run" / "metrics.jsonl").read_text())["epoch"] == 1
    assert main(["search", "--resume", str(tmp_path / "run"), "--device", "cpu", "--force"]) == 0
    assert "dsara: warning: " in capsys.readouterr().err
    after = torch.load(path, weights_only=True)
    assert after["epoch"] == 2 and after["device_type"] == "cpu"


def test_rng_restore_touches_only_the_current_gpu(monkeypatch):
    """An 8-GPU checkpoint on a 1-GPU machine: restoring every GPU's state would fail."""
    from dsara.search import resume

    calls = []

    def fail_all(*a, **k):
        raise AssertionError("every GPU's RNG state was restored")

    monkeypatch.setattr(torch.cuda, "set_rng_state_all", fail_all)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", fail_all)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda s, d="cuda": calls.append((s, d)))
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda d="cuda": torch.tensor([7]))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    cpu = torch.get_rng_state()
    current = torch.tensor([1, 2, 3], dtype=torch.uint8)
    state = {"torch": cpu, "cuda": [current.clone() for _ in range(8)], "cuda_current": current}
    resume.set_rng_state(state, torch.device("cuda", 0))
    assert len(calls) == 1 and torch.equal(calls[0][0], current)
    assert calls[0][1] == torch.device("cuda", 0)
    resume.set_rng_state(state, torch.device("cpu"))  # a CPU search touches no GPU at all
    assert len(calls) == 1
    saved = resume.rng_state(torch.device("cuda", 0))
    assert set(saved) == {"torch", "cuda_current"} and resume.rng_state(torch.device("cpu")).keys() \
        == {"torch"}
