"""`dsara evaluate` owns the run directory it writes its report into (`dsara.utils.lock`): while another
process does -- the run's own training, or a second evaluation -- it is refused in one line naming
the owner, and writes nothing; once the owner is gone it runs."""

from __future__ import annotations

from test_lock import TRAIN, holder, refused  # noqa: F401 (holder: a fixture)

from dsara.cli import main


def test_evaluate_is_refused_while_another_process_owns_the_run(tmp_path, capsys, holder):  # noqa: F811
    run_dir = tmp_path / "run"
    assert main(["train", *TRAIN, "--out", str(run_dir)]) == 0
    before = sorted(p.name for p in run_dir.iterdir())
    owner = holder(run_dir)
    argv = ["evaluate", str(run_dir), "--attacks", "clean,fgsm", "--device", "cpu"]
    refused(capsys, argv, owner.pid)
    assert sorted(p.name for p in run_dir.iterdir()) == before  # no report written
    owner.stdin.close()  # the owner ends
    owner.wait()
    assert main(argv) == 0 and (run_dir / "evaluation.json").is_file()
