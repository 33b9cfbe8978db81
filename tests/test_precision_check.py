"""The fp32-vs-bf16 search comparison behind the CPU-bf16 decision: it measures what it says."""

from dsara.bench.precision import compare, markdown
from dsara.search import SearchConfig


def test_compare_reports_alpha_drift_per_epoch_and_a_seed_control(tmp_path):
    cfg = SearchConfig(space="tiny", dataset="synthetic", epochs=1, batch_size=16, pgd_steps=1,
                       synthetic={"n_train": 128, "image_size": 8}, max_steps=2, device="cpu",
                       out="unused").validate()
    report = compare(cfg, ("fp32", "fp32"), workdir=tmp_path)
    rows = {(r["precision"], r["epoch"]): r for r in report["rows"]}
    # the same precision twice is the same (seeded) run: identical alpha at every epoch
    assert set(report["runs"]) == {"fp32", "fp32 (run 1)", "fp32 seed+1"}
    assert rows[("fp32 (run 1)", 1)]["alpha_cosine"] > 0.999999
    assert rows[("fp32 (run 1)", 1)]["max_op_weight_diff"] == 0
    # another seed starts from other alpha: the control drifts, from epoch 0 on
    assert rows[("fp32 seed+1", 0)]["alpha_cosine"] < 0.9
    assert report["runs"]["fp32 (run 1)"]["same_genotype"]
    assert "| fp32 seed+1 | 1 |" in markdown(report)
    assert not list(tmp_path.iterdir())  # the runs lived in a temporary folder
