"""The search benchmark: a CPU smoke run of both paths (structure, not timings), and its pieces."""

import json

import pytest
import torch

from dsara.arch.space import load_space
from dsara.arch.supernet import build_supernet
from dsara.bench.search import _min_norm_on_floats, main, projected_hours, saved_activation_bytes
from dsara.search.mgda import flat, min_norm_gamma


def test_cpu_smoke_run_reports_both_paths_and_the_ratio(tmp_path):
    out, md = tmp_path / "bench.json", tmp_path / "bench.md"
    code = main(["--device", "cpu", "--size", "small", "--batch", "4", "--steps", "2",
                 "--warmup", "1", "--pgd-steps", "1", "--precision", "auto", "--precision",
                 "bf16", "--profile", "4", "--json", str(out), "--markdown", str(md)])
    assert code == 0
    report = json.loads(out.read_text())
    assert report["device"].startswith("CPU") and report["space"] == "tiny"
    cases = {(c["path"], c["dtype"], c["stage"]): c for c in report["cases"]}
    assert set(cases) == {(p, d, s) for p, d in (("optimized", "fp32"), ("reference", "fp32"),
                                                 ("optimized", "bf16 autocast")) for s in (1, 2)}
    for c in cases.values():
        assert 0 < c["ms_q1"] <= c["ms_median"] <= c["ms_q3"]
        assert c["images_per_s"] == pytest.approx(2 * 4 / (c["ms_median"] / 1e3))
        assert c["saved_activations_mb"] > 0 and c["peak_mem_mb"] is None  # CPU: no peak
    rows = {r["dtype"]: r for r in report["summary"]}
    assert set(rows) == {"fp32", "bf16 autocast"}  # auto is fp32 on a CPU
    for row in rows.values():
        assert row["speedup_stage1"] > 0 and row["speedup_stage2"] > 0
        assert row["optimized_hours"] > 0 and row["reference_hours"] > 0
    assert "| optimized | first | 4 | 1 | 2 | fp32 |" in md.read_text()
    top = [c["top_ops"] for c in report["cases"] if "top_ops" in c]
    assert len(top) == 4 and all(len(t) == 4 for t in top)  # 2 precisions x 2 stages
    assert "Top ops of one optimized step: batch 4 K 1 stage 2 fp32" in md.read_text()


def test_orders_are_timed_side_by_side_and_only_first_order_meets_the_reference(tmp_path):
    out = tmp_path / "bench.json"
    assert main(["--device", "cpu", "--size", "small", "--batch", "4", "--steps", "1",
                 "--warmup", "0", "--pgd-steps", "1", "--stage", "2", "--order", "second",
                 "--order", "first", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    orders = {(c["path"], c["order"]) for c in report["cases"]}
    assert orders == {("optimized", "second"), ("optimized", "first"), ("reference", "first")}
    rows = {r["order"]: r for r in report["summary"]}
    assert rows["first"]["speedup_stage2"] > 0 and rows["second"]["speedup_stage2"] is None
    assert rows["second"]["optimized_hours"] > 0


def test_projected_hours_by_hand():
    # 25,000 / 32 = 781 steps per epoch; 21 epochs (the default stage 1) at 100 ms + 29 at 200 ms
    assert projected_hours({1: 100.0, 2: 200.0}, 32) == pytest.approx(781 * 7900 / 3.6e6)
    assert projected_hours({2: 200.0}, 32) == pytest.approx(781 * 10_000 / 3.6e6)


def test_reference_gamma_is_the_library_gamma_where_it_is_not_clipped():
    g = torch.Generator().manual_seed(0)
    checked = 0
    for _ in range(50):
        g1, g2 = [torch.randn(3, 4, generator=g)], [torch.randn(3, 4, generator=g)]
        ours = float(min_norm_gamma(flat(g1), flat(g2)))
        if 0 < ours < 1:
            assert _min_norm_on_floats(g1, g2) == pytest.approx(ours, abs=1e-6)
            checked += 1
    assert checked > 10


def test_partial_channels_shrink_the_saved_activations():
    x, y = torch.rand(4, 3, 16, 16), torch.randint(0, 10, (4,))
    sizes = [saved_activation_bytes(build_supernet(load_space("tiny"), partial_k=k), x, y)
             for k in (1, 2, 4)]
    assert sizes[0] > sizes[1] > sizes[2] > 0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_search_step_never_syncs_with_the_host_on_cuda():
    from dsara.search import SearchConfig
    from dsara.search.loop import Search

    cfg = SearchConfig(space="tiny", dataset="synthetic", synthetic={"n_train": 256},
                       batch_size=16, pgd_steps=2, device="cuda", out="unused")
    search = Search(cfg)
    batches = zip(search.train.epoch(0), search.val.epoch(0))
    for stage in (1, 2, 1, 2):  # warm-up: cuDNN autotuning, optimizer state
        search.step(*next(batches), stage)
    torch.cuda.synchronize()
    alphas = [a.detach().clone() for a in search.model.arch_parameters()]
    weights = [w.detach().clone() for w in search.weights]
    torch.cuda.set_sync_debug_mode("error")  # any host sync inside the steps raises
    try:
        for stage in (1, 2):
            search.step(*next(batches), stage)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    # the steps did their work: alpha and the weights moved
    assert any(not torch.equal(a, b) for a, b in zip(alphas, search.model.arch_parameters()))
    assert any(not torch.equal(w, v) for w, v in zip(weights, search.weights))
