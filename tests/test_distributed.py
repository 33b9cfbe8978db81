"""Data-parallel search: two gloo processes on CPU under torchrun, the tiny space, synthetic data.

One torchrun launch (it pays ~14 s of start-up on 2 cores) of a helper that saves every rank's
state after every epoch and runs, in turn: a search with per-rank BatchNorm (copied aside after its
first epoch, as if killed there), the same search with global-batch BatchNorm, and the command line
(`dsara.cli.main`, what `torchrun -m dsara search` calls) resuming the copy.
"""

import json
import os
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist

from dsara import DsaraError
from dsara.data.datasets import ImageSet
from dsara.data.loader import Loader
from dsara.search import SearchConfig, run

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="needs torch.distributed with gloo")

SYNTH = {"n_train": 64, "n_test": 16, "image_size": 8, "noise": 0.1}
BASE = dict(space="tiny", dataset="synthetic", synthetic=SYNTH, epochs=2, stage1_epochs=1,
            batch_size=8, pgd_steps=1, step_size=4 / 255, arch_lr=3e-2, max_steps=2,
            device="cpu")
# global-batch BatchNorm costs 2 gloo all-reduces per BN layer per pass (~3 ms each on a loaded
# 2-core machine): one step per stage keeps the test short
GLOBAL = BASE | {"max_steps": 1}
ALPHAS = ["alphas.accurate", "alphas.reduce", "alphas.robust"]

HELPER = """
import json, os, shutil, sys
import torch
import torch.distributed as dist
torch.set_num_threads(1)
import dsara.search.loop as loop
from dsara.cli import main
from dsara.search import SearchConfig, run

rank = int(os.environ["RANK"])
dist.init_process_group("gloo")  # one group for both searches (run() leaves a given group alone)
epoch = loop.Search.epoch

def saving_epoch(self, e, progress):  # every rank's full state after every epoch
    record = epoch(self, e, progress)
    os.makedirs(self.cfg.out, exist_ok=True)
    torch.save(self.model.state_dict(), os.path.join(self.cfg.out, f"rank{rank}_epoch{e + 1}.pt"))
    return record

loop.Search.epoch = saving_epoch
for job in json.loads(sys.argv[1]):
    if "cli" in job:
        assert main(job["cli"]) == 0
        continue
    cfg = SearchConfig(**job["config"])

    def snapshot(record, snap=job.get("snapshot"), out=cfg.out):  # 'killed' after epoch 1
        if snap and rank == 0 and record["epoch"] == 1:
            shutil.copytree(out, snap, ignore=shutil.ignore_patterns("rank*"))

    run(cfg, callbacks=[snapshot], progress=False)
dist.destroy_process_group()
"""


def torchrun(*args, cwd):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           *args]
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    (root / "helper.py").write_text(HELPER)
    jobs = [{"config": BASE | {"out": str(root / "per_rank")}, "snapshot": str(root / "killed")},
            {"config": GLOBAL | {"out": str(root / "global"), "sync_bn": True}},
            {"cli": ["search", "--resume", str(root / "killed"), "--no-progress"]}]
    cli = torchrun(str(root / "helper.py"), json.dumps(jobs), cwd=root)
    single = {name: torch.load(run(SearchConfig(**cfg | {"out": str(root / name)})).run_dir
                               / "checkpoint.pt", weights_only=True)["model"]
              for name, cfg in [("single", BASE), ("single_global", GLOBAL)]}
    return root, cli, single


def state(root, run_name, rank, epoch):
    return torch.load(root / run_name / f"rank{rank}_epoch{epoch}.pt", weights_only=True)


@pytest.mark.parametrize("run_name", ["per_rank", "global"])
def test_alpha_and_weights_are_identical_on_every_rank_after_every_epoch(runs, run_name):
    root = runs[0]
    for epoch in (1, 2):  # stage 1, then stage 2 (min-norm gamma from the averaged gradients)
        a, b = state(root, run_name, 0, epoch), state(root, run_name, 1, epoch)
        # per-rank BatchNorm keeps per-rank running statistics (unused while searching)
        keys = [k for k in a if run_name == "global" or "running" not in k]
        for k in keys:
            assert torch.equal(a[k], b[k]), f"{k} differs between ranks after epoch {epoch}"


def test_global_batchnorm_run_equals_the_single_process_run_on_the_same_global_batch(runs):
    """Same global batches, same PGD random starts, same statistics: only the floating-point
    summation order differs (all-reduced sums vs one sum), so alpha agrees to ~5e-7 where it has
    moved ~0.05-0.09 (arch_lr 3e-2); 1e-5 leaves room for other BLAS builds. The per-rank
    BatchNorm run, a different algorithm, is ~0.1 away from its single-process twin, so the
    check can fail."""
    root, _, single = runs
    ref = single["single_global"]
    glob = state(root, "global", 0, 2)
    for k in ALPHAS:
        torch.testing.assert_close(glob[k], ref[k], rtol=0, atol=1e-5)
        assert (state(root, "per_rank", 0, 2)[k] - single["single"][k]).abs().max() > 1e-2
    for k, v in ref.items():
        if v.is_floating_point():
            torch.testing.assert_close(glob[k], v, rtol=1e-4, atol=1e-4)


def test_rank0_writes_and_the_cli_resumes_a_data_parallel_search_exactly(runs):
    root, cli, _ = runs
    resumed = root / "killed"
    records = [json.loads(x) for x in (resumed / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]  # one writer: no duplicated lines
    assert cli.stdout.count("search finished") == 2  # both ranks return; only rank 0 logged epochs
    assert cli.stdout.count("epoch 2/2 stage 2") == 3  # 3 searches, each logged by rank 0 only
    got = torch.load(resumed / "checkpoint.pt", weights_only=True)["model"]
    straight = state(root, "per_rank", 0, 2)
    for k in ALPHAS:
        assert torch.equal(got[k], straight[k]), k


def test_loader_shards_make_up_the_single_process_batch():
    g = torch.Generator().manual_seed(0)
    data = ImageSet(torch.randint(0, 256, (40, 3, 8, 8), dtype=torch.uint8, generator=g),
                    torch.arange(40))
    whole = list(Loader(data, 8, augment=True, seed=3).epoch(1))
    shards = [list(Loader(data, 8, augment=True, seed=3, rank=r, world_size=2).epoch(1))
              for r in range(2)]
    for step, (x, y) in enumerate(whole):
        assert torch.equal(torch.cat([shards[0][step][0], shards[1][step][0]]), x)
        assert torch.equal(torch.cat([shards[0][step][1], shards[1][step][1]]), y)
    with pytest.raises(DsaraError, match="must split evenly over 3 processes"):
        Loader(data, 8, rank=0, world_size=3)
