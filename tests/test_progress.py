"""Progress bars come from tqdm and only on a terminal; TensorBoard scalars carry the same figures
as the run's own logs."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest

from dsara.cli import main
from dsara.search.rundir import RunDir
from dsara.utils import progress

ROOT = Path(__file__).resolve().parents[1]
SEARCH = ["search", "--space", "tiny", "--dataset", "synthetic", "--set", "synthetic.n_train=64",
          "--set", "synthetic.image_size=8", "--batch-size", "8", "--pgd-steps", "1",
          "--set", "max_steps=2", "--device", "cpu"]


def test_bars_only_when_asked_or_on_a_terminal(capsys):
    assert list(progress.bar(range(3), desc="forced", enabled=True)) == [0, 1, 2]
    err = capsys.readouterr().err
    assert "forced" in err and "0/3" in err  # tqdm drew its bar
    list(progress.bar(range(3), desc="default"))  # pytest's stderr is not a terminal: no bar
    with progress.only_outer():
        list(progress.bar(range(3), desc="inner", enabled=True))  # an outer bar owns the screen
    assert capsys.readouterr().err == ""


def test_no_hand_written_bar_is_left():
    offenders = [str(p) for p in (ROOT / "dsara").rglob("*.py")
                 if '"\\r' in p.read_text() or "'\\r" in p.read_text()]
    assert offenders == []


def test_a_search_on_a_terminal_draws_a_tqdm_bar_and_plain_lines_otherwise(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "dsara", *SEARCH, "--epochs", "1", "--stage1-epochs", "0"]
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))  # 24x120 chars
    proc = subprocess.Popen([*cmd, "--out", str(tmp_path / "tty")], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=follower, env=env)
    os.close(follower)
    screen = b""
    while True:  # read the terminal until the process closes it
        try:
            chunk = os.read(leader, 4096)
        except OSError:
            break
        if not chunk:
            break
        screen += chunk
    out, _ = proc.communicate(timeout=120)
    os.close(leader)
    assert proc.returncode == 0, screen.decode(errors="replace")
    text = screen.decode(errors="replace")
    assert "epoch 1/1" in text and "/2 [" in text and "step" in text  # tqdm's bar of 2 steps
    assert "epoch 1/1 stage 2 | arch-val clean" in out.decode()  # the epoch line, on stdout

    piped = subprocess.run([*cmd, "--out", str(tmp_path / "pipe")], capture_output=True,
                           env=env, timeout=120)
    assert piped.returncode == 0 and b"\r" not in piped.stderr and b"step/s" not in piped.stderr
    assert b"epoch 1/1 stage 2 | arch-val clean" in piped.stdout


def _scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_tensorboard_scalars_of_a_search_match_its_metrics(tmp_path, capsys):
    out = tmp_path / "s"
    assert main([*SEARCH, "--epochs", "2", "--stage1-epochs", "1", "--no-progress", "--out",
                 str(out), "--tensorboard"]) == 0
    records = RunDir(out).read_metrics()
    got = _scalars(out / "tensorboard")
    types = set(records[0]["alpha_entropy"])
    assert types == {"accurate", "reduce", "robust"}
    assert {f"alpha_entropy/{t}" for t in types} | {f"param_free/{t}" for t in types} | {
        "accuracy/arch_val_clean", "accuracy/arch_val_pgd", "gamma/mean", "lr/weights"} <= set(got)
    assert [s for s, _ in got["accuracy/arch_val_pgd"]] == [1, 2]
    for tag, key in (("accuracy/arch_val_clean", "val_clean_acc"),
                     ("loss/train_adv", "train_loss_adv")):
        assert [v for _, v in got[tag]] == pytest.approx([r[key] for r in records], rel=1e-6)
    assert got["gamma/mean"] == [(2, pytest.approx(records[1]["gamma_mean"], rel=1e-6))]
    assert [v for _, v in got["alpha_entropy/robust"]] == pytest.approx(
        [r["alpha_entropy"]["robust"] for r in records], rel=1e-6)
    assert [v for _, v in got["param_free/reduce"]] == [r["param_free"]["reduce"] for r in records]


def test_tensorboard_scalars_of_a_training_run_match_its_metrics(tmp_path, capsys):
    out, logs = tmp_path / "t", tmp_path / "tb"
    assert main(["train", "resnet_tiny", "--dataset", "synthetic", "--synthetic-train", "64",
                 "--synthetic-test", "16", "--synthetic-size", "8", "--epochs", "2", "--steps",
                 "1", "--batch-size", "32", "--val-size", "16", "--val-steps", "1", "--device",
                 "cpu", "--out", str(out), "--tensorboard", str(logs)]) == 0
    history = json.loads((out / "metrics.json").read_text())["history"]
    got = _scalars(logs)
    assert {"accuracy/val_clean", "accuracy/val_pgd", "lr", "loss/loss"} <= set(got)
    assert [v for _, v in got["accuracy/val_pgd"]] == pytest.approx(
        [r["val_robust"] for r in history], rel=1e-6)
    assert [v for _, v in got["loss/loss"]] == pytest.approx(
        [r["train"]["loss"] for r in history], rel=1e-6)
    assert [s for s, _ in got["lr"]] == [1, 2]
