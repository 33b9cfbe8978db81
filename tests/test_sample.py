"""dsara arch sample: valid, distinct, reproducible random genotypes."""

import json

import pytest
import torch

from dsara.arch.archfile import load_architecture
from dsara.arch.build import build_model
from dsara.arch.sample import _key, sample_architectures, sample_genotypes
from dsara.arch.space import list_spaces, load_space
from dsara.cli import main
from dsara.errors import DsaraError


@pytest.mark.parametrize("space", list_spaces())
def test_samples_are_valid_cells_of_the_space(space):
    sp = load_space(space)
    ops = set(sp.ops) - {"none"}
    for g in sample_genotypes(sp, 5, seed=3):
        assert set(g.cells) == set(sp.cell_types)
        for cell in g.cells.values():
            assert cell.nodes == sp.nodes and cell.concat == tuple(range(2, sp.nodes + 2))
            for node in range(sp.nodes):
                (op_a, a), (op_b, b) = cell.edges[2 * node: 2 * node + 2]
                assert a != b and 0 <= a < node + 2 and 0 <= b < node + 2
                assert {op_a, op_b} <= ops


def test_samples_are_distinct_and_reproducible():
    sp = load_space("tiny")
    first = sample_genotypes(sp, 8, seed=0)
    assert first == sample_genotypes(sp, 8, seed=0)
    assert len({_key(g) for g in first}) == 8
    assert sample_genotypes(sp, 3, seed=0) == first[:3]  # a prefix, not a new draw
    assert sample_genotypes(sp, 8, seed=1) != first


def test_draws_cover_inputs_and_ops():
    """Uniform draws: over many cells every input pair and every op turns up."""
    sp = load_space("tiny")
    genotypes = sample_genotypes(sp, 60, seed=0)
    ops = {op for g in genotypes for c in g.cells.values() for op, _ in c.edges}
    pairs = {(c.edges[2][1], c.edges[3][1]) for g in genotypes for c in g.cells.values()}
    assert ops == set(sp.ops) and pairs == {(0, 1), (0, 2), (1, 2)}


def test_a_space_too_small_for_n_distinct_genotypes_is_refused():
    sp = load_space("tiny", {"ops": ["skip_connect"], "nodes": 1})  # one possible genotype
    assert len(sample_genotypes(sp, 1, seed=0)) == 1
    with pytest.raises(DsaraError, match="fewer than 2 distinct genotypes"):
        sample_genotypes(sp, 2, seed=0)


def test_sampled_architectures_build_and_run():
    for arch in sample_architectures("tiny", 2, seed=5):
        model = build_model(arch).eval()
        assert model(torch.rand(2, 3, 16, 16)).shape == (2, 10)
        assert arch.provenance["source"] == "random"


def test_cli_writes_files_with_random_provenance(tmp_path, capsys):
    assert main(["arch", "sample", "dsara", "--n", "3", "--seed", "7", "--out",
                 str(tmp_path / "a")]) == 0
    paths = capsys.readouterr().out.split()
    assert [p.rsplit("/", 1)[1] for p in paths] == ["random-0.json", "random-1.json",
                                                    "random-2.json"]
    archs = [load_architecture(p) for p in paths]
    assert all(a.provenance["source"] == "random" and a.provenance["seed"] == 7 for a in archs)
    assert main(["arch", "sample", "dsara", "--n", "3", "--seed", "7", "--out",
                 str(tmp_path / "b")]) == 0
    again = [json.loads((tmp_path / "b" / f"random-{i}.json").read_text()) for i in range(3)]
    assert [a["genotype"] for a in again] == [a.genotype.to_dict() for a in archs]
