"""What a new user meets in the first hour (issue 24): every dead end names the command that
works, units are checked, evaluations are kept apart, progress is printed without a terminal."""

import json

import pytest

from dsara.cli import main
from dsara.search import loop as search_loop

SEARCH = ["search", "--space", "tiny", "--dataset", "synthetic", "--epochs", "2",
          "--stage1-epochs", "1", "--batch-size", "8", "--pgd-steps", "1", "--max-steps", "2",
          "--device", "cpu", "--set", "synthetic.n_train=64", "--set", "synthetic.image_size=8",
          "--no-progress"]


def ctrl_c_at_step(monkeypatch, cls, name: str, at: int) -> None:
    """Make the `at`-th call of cls.name raise KeyboardInterrupt, as Ctrl-C there would."""
    calls = {"n": 0}
    original = getattr(cls, name)

    def interrupted(*args, **kw):
        calls["n"] += 1
        if calls["n"] == at:
            monkeypatch.setattr(cls, name, original)
            raise KeyboardInterrupt
        return original(*args, **kw)

    monkeypatch.setattr(cls, name, interrupted)


def test_search_stopped_in_its_first_epoch_resumes_from_its_start(tmp_path, monkeypatch,
                                                                   capsys):
    out = str(tmp_path / "s")
    ctrl_c_at_step(monkeypatch, search_loop.Search, "step", at=1)
    assert main([*SEARCH, "--out", out]) == 130
    err = capsys.readouterr().err
    assert "no checkpoint yet" in err and f"dsara search --resume {out}" in err, err
    # the same command again points at --resume, and --resume then works
    assert main([*SEARCH, "--out", out]) == 2
    assert f"continue it with --resume {out}" in capsys.readouterr().err
    assert main(["search", "--resume", out, "--no-progress"]) == 0
    lines = (tmp_path / "s" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [1, 2]


def test_search_stopped_in_a_later_epoch_names_the_kept_epoch(tmp_path, monkeypatch, capsys):
    out = str(tmp_path / "s")
    ctrl_c_at_step(monkeypatch, search_loop.Search, "step", at=3)  # epoch 2's first step
    assert main([*SEARCH, "--out", out]) == 130
    err = capsys.readouterr().err
    assert "interrupted in epoch 2" in err and "checkpoint of epoch 1" in err, err
    assert main(["search", "--resume", out, "--no-progress"]) == 0


TRAIN = ["resnet_tiny", "--dataset", "synthetic", "--synthetic-train", "64", "--synthetic-test",
         "16", "--synthetic-size", "8", "--epochs", "2", "--steps", "1", "--batch-size", "32",
         "--val-size", "16", "--val-steps", "1", "--device", "cpu"]


@pytest.mark.parametrize("at,says", [(1, "has no epoch done yet: the same command starts it"),
                                     (2, "keeps last.pt of epoch 1: the same command continues")])
def test_train_ctrl_c_names_the_epoch_and_the_command_that_continues(tmp_path, monkeypatch,
                                                                     capsys, at, says):
    from dsara.train import loop as train_loop

    out = str(tmp_path / "t")
    command = ["train", *TRAIN, "--out", out]
    ctrl_c_at_step(monkeypatch, train_loop, "train_step", at=at)  # 1 step per epoch
    assert main(command) == 130
    err = capsys.readouterr().err
    assert f"interrupted in epoch {at}" in err and says in err, err
    assert "dsara train resnet_tiny --dataset synthetic" in err and f"--out {out}" in err
    assert main(command) == 0
    history = json.loads((tmp_path / "t" / "metrics.json").read_text())["history"]
    assert [r["epoch"] for r in history] == [1, 2]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A two-epoch resnet_tiny run on synthetic data."""
    out = tmp_path_factory.mktemp("trained") / "run"
    assert main(["train", *TRAIN, "--out", str(out)]) == 0
    return out


@pytest.mark.parametrize("command", [
    ["evaluate", "RUN", "--attacks", "clean"], ["search", "--out", "OUT"],
    ["train", "resnet_tiny", "--out", "OUT"], ["transfer-matrix", "RUN", "RUN", "--out", "OUT"]])
@pytest.mark.parametrize("eps,says", [
    ("8", "eps 8 is larger than 1, but eps is in [0, 1] pixel units; did you mean 8/255?"),
    ("-8/255", "eps -8/255 is negative"), ("-0.1", "eps -0.1 is negative")])
def test_eps_in_wrong_units_or_negative_is_one_line(trained, tmp_path, capsys, command, eps,
                                                    says):
    words = [{"RUN": str(trained), "OUT": str(tmp_path / "o")}.get(w, w) for w in command]
    assert main([*words, "--eps", eps]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"dsara: error: {says}" or (err.startswith("dsara: error: ") and says in err
                                             and "\n" not in err), err
    assert not (tmp_path / "o").exists()


def test_a_smaller_evaluation_goes_beside_the_full_one_and_the_card_names_it(trained, tmp_path,
                                                                             capsys):
    full = ["evaluate", str(trained), "--attacks", "clean,fgsm", "--device", "cpu"]
    assert main(full) == 0
    main_file = trained / "evaluation.json"
    assert json.loads(main_file.read_text())["n"] == 16
    assert main([*full[:2], "--attacks", "clean", "--limit", "8", "--device", "cpu"]) == 0
    assert "is kept: it holds a fuller evaluation (clean, fgsm at eps 8/255 on 16 test images)" \
        in capsys.readouterr().out
    assert json.loads(main_file.read_text())["n"] == 16
    side = trained / "evaluation-8img-8of255-clean.json"
    assert json.loads(side.read_text())["n"] == 8
    assert main(["export", str(trained), "--format", "robustbench", "--out",
                 str(tmp_path / "rb")]) == 0
    card = json.loads((tmp_path / "rb" / "run.json").read_text())
    assert "dsara evaluate: clean, fgsm at eps 8/255 on 16 test images" in card["footnote"]
    assert main([*full[:2], "--attacks", "clean", "--limit", "8", "--device", "cpu",
                 "--force"]) == 0
    assert json.loads(main_file.read_text())["n"] == 8
    main_file.unlink()  # the other tests of this module evaluate afresh


def test_pace_prints_every_tenth_and_every_30_s_with_rate_and_eta(capsys):
    from dsara.utils import progress

    now = {"t": 0.0}
    pace = progress.Pace("work", 100, unit="batch", enabled=True, clock=lambda: now["t"])
    for _ in range(5):  # 5 batches at 10 s each: the 30 s rule gives a line at 30 s
        now["t"] += 10
        pace.update()
    for _ in range(20):  # then fast: a line per tenth (10 batches) of the work
        now["t"] += 0.5
        pace.update()
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == "work: 3/100 batches (3%), 10.00 s per batch, 30 s elapsed, ETA 16 min"
    assert [int(x.split(": ")[1].split("/")[0]) for x in lines] == [3, 13, 23]
    assert lines[-1] == "work: 23/100 batches (23%), 2.57 s per batch, 59 s elapsed, ETA 3 min"


def test_projection_says_days(tmp_path):
    import types

    import torch

    from dsara.search import SearchConfig

    search = types.SimpleNamespace(device=torch.device("cpu"), steps=781)
    line = search_loop.projection(SearchConfig(out=str(tmp_path)), search, 0, 2.7)
    assert line.startswith("projected wall time of the whole search on cpu: 50 epochs x 781 "
                           "steps at 2.70 s per step = 1.2 days (it is days")


def test_without_a_terminal_search_train_and_evaluate_print_progress_lines(tmp_path,
                                                                           monkeypatch, capsys):
    from dsara.utils import progress

    monkeypatch.setattr(progress, "MIN_GAP_S", 0.0)  # a line per tenth, however fast the steps
    out = tmp_path / "s"
    assert main([*SEARCH[:-1], "--out", str(out)]) == 0  # without --no-progress
    got = capsys.readouterr()
    assert got.out.startswith("projected wall time of the whole search on cpu: 2 epochs x 2 "
                              "steps at "), got.out
    assert "search (epoch 2/2): 4/4 steps (100%)" in got.err and "ETA" in got.err, got.err
    assert main([*SEARCH, "--out", str(tmp_path / "quiet")]) == 0  # --no-progress: no lines
    assert "search (epoch" not in capsys.readouterr().err
    assert main(["train", *TRAIN, "--out", str(tmp_path / "t")]) == 0
    err = capsys.readouterr().err
    assert "train (epoch 1/2): 1/2 batches (50%)" in err and "ETA" in err, err
    assert main(["evaluate", str(tmp_path / "t"), "--attacks", "clean,fgsm", "--device",
                 "cpu"]) == 0
    err = capsys.readouterr().err
    assert "evaluate fgsm (2/2 attacks): 1/1 batches (100%)" in err, err


def test_quick_is_the_main_job_on_synthetic_data_and_flags_override_it():
    from dsara.cli import build_parser
    from dsara.commands.search import build_config

    cfg = build_config(build_parser(["search"]).parse_args(["search", "--quick", "--epochs", "2"]))
    assert (cfg.space, cfg.dataset, cfg.out, cfg.epochs) == ("tiny", "synthetic", "runs/quick", 2)
    assert cfg.synthetic == {"n_train": 512, "n_test": 128, "image_size": 16}
    cfg = build_config(build_parser(["search"]).parse_args(
        ["search", "--dataset", "synthetic", "--synthetic-train", "300", "--synthetic-size", "8"]))
    assert cfg.synthetic == {"n_train": 300, "image_size": 8}  # as train and evaluate spell it


def test_readme_first_screen_is_install_main_job_and_tests():
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = text.split("## Set up", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    commands = [line.split("#")[0].strip() for line in block.splitlines() if line.split("#")[0]
                .strip()]
    assert commands == ['pip install ".[dev]"', "dsara search --quick", "python -m pytest"]


def test_help_and_a_typo_start_without_torch():
    import subprocess
    import sys

    code = ("import sys; from dsara.cli import main\n"
            "try: main(['--help'])\nexcept SystemExit: pass\n"
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60)
    assert out.stdout.strip().endswith("False"), out.stdout + out.stderr
    assert "search" in out.stdout and "transfer-matrix" in out.stdout


def test_unknown_set_key_lists_both_and_suggests_the_closest(tmp_path, capsys):
    assert main([*SEARCH, "--out", str(tmp_path / "s"), "--set", "lamda=0.2"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "unknown key 'lamda'; did you mean 'lam'?" in err, err
    assert "search config keys:" in err and "keys of the space 'tiny':" in err
    assert main(["train", *TRAIN, "--out", str(tmp_path / "t"), "--set", "bta=5"]) == 2
    assert "unknown key 'bta'; did you mean 'beta'?" in capsys.readouterr().err


def test_relative_data_root_is_stored_absolute_and_the_error_names_the_path(tmp_path,
                                                                          monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    assert main(["search", "--dataset", "cifar10", "--data-root", "data", "--out", "s"]) == 2
    err = capsys.readouterr().err
    assert f"cifar10 files not found under {tmp_path / 'data'} " in err, err
    from dsara.cli import build_parser
    from dsara.commands import train as train_cmd

    args = build_parser(["train"]).parse_args(["train", "resnet_tiny", "--out", "t",
                                               "--dataset", "cifar10", "--data-root", "data"])
    assert train_cmd.build_config(args).data_root == str(tmp_path / "data")


def test_the_quickstart_database_lock_is_ignored():
    from fnmatch import fnmatch
    from pathlib import Path

    patterns = (Path(__file__).resolve().parents[1] / ".gitignore").read_text().split()
    assert any(fnmatch("dsara.db.lock", p) for p in patterns), patterns


@pytest.mark.parametrize("epochs", range(1, 13))
def test_short_piecewise_schedules_start_at_lr_and_drop_one_step_at_a_time(epochs):
    from dsara.train.config import TrainConfig
    from dsara.train.loop import lr_factor

    cfg = TrainConfig(arch="resnet_tiny", out="x", epochs=epochs)  # milestones 0.5, 0.75
    factors = [lr_factor(cfg, e) for e in range(epochs)]
    assert factors[0] == 1, factors
    ratios = [b / a for a, b in zip(factors[:-1], factors[1:], strict=True)]
    assert all(r == pytest.approx(1) or r == pytest.approx(0.1) for r in ratios), factors
    assert sum(r == pytest.approx(0.1) for r in ratios) == min(2, epochs - 1), factors


def test_the_schedule_and_a_rounded_val_size_are_said(tmp_path, capsys):
    assert main(["train", *TRAIN, "--epochs", "3", "--out", str(tmp_path / "t")]) == 0
    out = capsys.readouterr().out
    assert ("lr schedule: 0.1 in epoch 1, 0.01 in epoch 2, 0.001 in epoch 3 (milestones 0.5, "
            "0.75 of 3 epochs") in out, out
    # 64 images of 10 classes (6 or 7 each): a quarter of each is 1.5 or 1.75, rounded to 2
    assert "44 training images, 20 held out for validation, not val_size 16: each class gives " \
        "its share rounded to whole images (2 of each of 10 classes)" in out, out
    assert [r["lr"] for r in json.loads((tmp_path / "t" / "metrics.json").read_text())[
        "history"]] == pytest.approx([0.1, 0.01, 0.001])
    with pytest.raises(SystemExit) as stop:
        main(["train", "--help"])
    assert stop.value.code == 0 and "halves up" in " ".join(capsys.readouterr().out.split())
