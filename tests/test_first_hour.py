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
