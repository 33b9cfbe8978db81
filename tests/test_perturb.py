"""Perturbation-based selection (selection = "pt", a labelled reconstruction of DARTS-PT): it
chooses what the supernet needs, where alpha's magnitude points elsewhere."""

import json
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dsara.arch.genotype import derive
from dsara.errors import DsaraError
from dsara.search import SearchConfig, run
from dsara.search.perturb import select

OPS = ["skip_connect", "avg_pool_3x3", "sep_conv_3x3"]
# 2 nodes: edges 0, 1 feed node 0; edges 2, 3, 4 (inputs 0, 1, 2) feed node 1
USEFUL = torch.tensor([1.0, 1.0, 0.0, 1.0, 1.0])  # how much each edge's sep_conv matters


class Known(nn.Module):
    """A stand-in supernet whose accuracy depends only on the sep_conv weight of the useful
    edges, while alpha favours skip_connect everywhere and edge 2 most: magnitude and
    perturbation must disagree, and the right answer is known."""

    def __init__(self):
        super().__init__()
        self.ops, self.macro = OPS, SimpleNamespace(nodes=2)
        alpha = torch.zeros(5, 3)
        alpha[:, 0] = 2.0  # skip_connect has the largest alpha on every edge ...
        alpha[2, 0] = 4.0  # ... and edge 2 (input 0 of node 1) is the strongest edge
        self.alphas = nn.ParameterDict({"accurate": nn.Parameter(alpha)})
        self.bias = nn.Parameter(torch.zeros(10))

    def forward(self, x, weights=None):
        w = (weights or {"accurate": torch.softmax(self.alphas["accurate"], -1)})["accurate"]
        margin = 3 * (USEFUL * w[:, 2]).sum() - 1.0
        cls = (x.mean((1, 2, 3)) * 10).floor().long().clamp(0, 9)  # the image encodes its class
        return margin * F.one_hot(cls, 10).float() + self.bias


def images(n=40):
    y = torch.arange(n) % 10
    return (y.float() / 10 + 0.05).view(n, 1, 1, 1).expand(n, 3, 4, 4).clone(), y


@pytest.mark.parametrize("measure", ["accuracy", "loss"])
def test_it_keeps_the_ops_and_edges_whose_removal_hurts_where_magnitude_keeps_skips(measure):
    net = Known()
    x, y = images()
    magnitude = derive(dict(net.alphas.items()), OPS, 2).cells["accurate"]
    assert {op for op, _ in magnitude.edges} == {"skip_connect"}
    assert 0 in [j for _, j in magnitude.edges[2:]]  # node 1 keeps input 0 (edge 2)
    genotype, record = select(net, x, y, eps=0.0, step_size=0.0, steps=0, measure=measure)
    cell = genotype.cells["accurate"]
    assert cell.edges[:2] == (("sep_conv_3x3", 0), ("sep_conv_3x3", 1))
    assert sorted(cell.edges[2:]) == [("sep_conv_3x3", 1), ("sep_conv_3x3", 2)]  # not edge 2
    assert record["evaluations"] == 1 + 5 * (3 + 1) + (3 + 1)  # ops (+ rescore), node 1's edges
    assert record["end"]["loss"] < record["start"]["loss"]
    assert net.alphas["accurate"].requires_grad and net.training  # the net is left as found


def test_pt_settings_are_checked():
    with pytest.raises(DsaraError, match="selection must be magnitude or pt"):
        SearchConfig(selection="biggest").validate()
    with pytest.raises(DsaraError, match="set one of them"):
        SearchConfig(selection="pt", skip_cap=2).validate()
    with pytest.raises(DsaraError, match="pt_images must be >= 1"):
        SearchConfig(selection="pt", pt_images=0).validate()


def test_a_search_with_selection_pt_writes_the_perturbation_cells_and_its_record(tmp_path):
    cfg = SearchConfig(space="tiny", dataset="synthetic",
                       synthetic={"n_train": 64, "n_test": 16, "image_size": 8, "noise": 0.1},
                       epochs=1, batch_size=8, pgd_steps=1, step_size=4 / 255, max_steps=2,
                       order="first", device="cpu", selection="pt", pt_images=16,
                       channels_last="on",
                       out=str(tmp_path / "run"))
    result = run(cfg)
    arch = json.loads((result.run_dir / "architecture.json").read_text())
    record = json.loads((result.run_dir / "pt_selection.json").read_text())
    assert arch["provenance"]["selection"].startswith("pt")
    assert arch["genotype"] == result.architecture.genotype.to_dict()
    assert record["images"] == 16 and record["eps"] == cfg.eps and record["steps"] == 1
    chosen = {key: v["op"] for key, v in record["ops"].items()}
    for cell_type, cell in arch["genotype"].items():
        assert len(cell["edges"]) == 2 * 2  # tiny space: 2 nodes, 2 edges each
        start = 0
        for node in range(2):
            kept = record["edges"][f"{cell_type}/node{node}"]["kept"]
            ops = [chosen[f"{cell_type}/{start + j}"] for j in kept]
            assert [tuple(e) for e in cell["edges"][2 * node: 2 * node + 2]] == \
                list(zip(ops, kept))
            start += node + 2


def test_pt_summary_counts_ties_and_the_winning_harm_in_images(tmp_path):
    """scripts/pt_summary.py on a hand-made record: one tied op decision, one decided by 2 images."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    record = {"measure": "accuracy", "images": 64, "start": {"error": 0.5, "loss": 1.0},
              "end": {"error": 0.6, "loss": 1.1},
              "ops": {"a/0": {"op": "x", "harm": {"x": [1 / 64, 0.1], "y": [1 / 64, 0.0]}},
                      "a/1": {"op": "y", "harm": {"x": [0.0, 0.3], "y": [2 / 64, 0.0]}}},
              "edges": {"a/node0": {"kept": [0, 1], "harm": {"0": [0.0], "1": [0.0]}}}}
    path = tmp_path / "pt_selection.json"
    path.write_text(json.dumps(record))
    script = Path(__file__).parents[1] / "scripts" / "pt_summary.py"
    out = subprocess.run([sys.executable, str(script), str(path), "--json"], check=True,
                         capture_output=True, text=True).stdout
    s = json.loads(out)[str(path)]
    assert s["ops"] == {"decisions": 2, "accuracy_ties": 1, "winning_harm_images": [1, 2]}
    assert s["inputs"]["accuracy_ties"] == 1
    assert s["binomial_se_images"] == 4.0  # sqrt(64 * 0.5 * 0.5)
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    proc = subprocess.run([sys.executable, str(script), str(bad)], capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
