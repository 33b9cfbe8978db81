"""Run dirs, a checkpoint and a study written by dsara at commit 49fa2ff (the flat layout), for
tests/test_layout_compat.py. Ran once: python make.py OUT (needs that commit's code)."""
import sys
from pathlib import Path

import torch

from dsara.cli import main
from dsara.search import SearchConfig, run

out = Path(sys.argv[1]).resolve()
out.mkdir(parents=True)
torch.set_num_threads(1)

class Stop(Exception):
    pass

def stop_after_first(record):
    if record["epoch"] == 1:
        raise Stop

cfg = SearchConfig(space="tiny", dataset="synthetic",
                   synthetic={"n_train": 64, "n_test": 16, "image_size": 8}, epochs=2,
                   stage1_epochs=1, batch_size=8, pgd_steps=1, max_steps=2, order="second",
                   device="cpu", out=str(out / "search"))
try:
    run(cfg, callbacks=[stop_after_first], progress=False)
except Stop:
    pass
assert main(["search", "--space", "tiny", "--dataset", "synthetic", "--set", "synthetic.n_train=128",
             "--set", "synthetic.image_size=8", "--epochs", "1", "--max-steps", "2", "--pgd-steps", "1", "--batch-size", "8",
             "--order", "first", "--device", "cpu", "--out", str(out / "done")]) == 0
assert main(["train", str(out / "done" / "architecture.json"), "--dataset", "synthetic",
             "--synthetic-train", "128", "--synthetic-test", "32", "--synthetic-size", "8",
             "--method", "pgd-at", "--cells", "5", "--channels", "4", "--auxiliary-weight", "0", "--epochs", "2", "--steps", "1", "--batch-size", "64",
             "--val-size", "32", "--device", "cpu", "--out", str(out / "train")]) == 0
storage = f"sqlite:///{out / 'study.db'}"
assert main(["study", "create", "smoke", "--from", "smoke", "--storage", storage,
             "--artifact-root", str(out / "studies")]) == 0
assert main(["study", "run", "smoke", "--storage", storage, "--n-trials", "2"]) == 0
