import json

import pytest
import torch

import dsara
from dsara import DsaraError, parse_genotype
from dsara.arch.archfile import (
    SCHEMA_VERSION,
    Architecture,
    builtin_architecture,
    load_architecture,
    save_architecture,
)
from dsara.arch.genotype import derive, get_published, n_edges, published
from dsara.arch.profile import count_parameters

# Parameter counts the papers report for their CIFAR-10 networks (auxiliary head excluded).
PAPER_PARAMS_M = {"DARTS_V2": 3.3, "PC_DARTS": 3.6, "ADVRUSH": 4.2, "PDARTS": 3.4, "RACL": 3.6}


def test_published_cells_parse_from_their_authors_text():
    cells = published()
    assert {"DARTS_V2", "PC_DARTS", "ADVRUSH", "ARNAS"} <= set(cells)
    assert set(cells["ARNAS"].cells) == {"accurate", "reduce", "robust"}
    assert cells["PC_DARTS"]["normal"].concat == (2, 3, 4, 5)  # from range(2, 6)
    assert get_published("dsara") == cells["ARNAS"]


@pytest.mark.parametrize("name", sorted(PAPER_PARAMS_M))
def test_published_cells_have_their_papers_parameter_counts(name):
    model = dsara.build_model(name)  # the paper's final size: 36 channels, 20 cells
    params = count_parameters(model) / 1e6
    assert params == pytest.approx(PAPER_PARAMS_M[name], rel=0.02)


def test_darts_v2_is_3_3m_at_36_channels_20_cells():
    model = dsara.build_model("DARTS_V2", cells=20, channels=36)
    assert count_parameters(model) / 1e6 == pytest.approx(3.3, rel=0.02)
    assert count_parameters(model, include_auxiliary=True) > count_parameters(model)


def test_text_round_trip():
    g = get_published("ARNAS")
    assert parse_genotype(g.to_text()) == g


@pytest.mark.parametrize("text,needle", [
    ("Genotype(normal=[('sep_conv_3x3', 0)] * 8, normal_concat=[2])", "list literal"),
    ("__import__('os').system('true')", "Genotype(name=[...]"),
    ("Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1)], normal_concat=list(range(2,3)))",
     "range(a, b)"),
    ("Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', x)], normal_concat=[2])",
     "integer literal"),
    ("Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 5)], normal_concat=[2])",
     "does not exist"),
    ("Genotype(normal=[('conv_7x7', 0), ('sep_conv_3x3', 1)], normal_concat=[2])",
     "unknown op 'conv_7x7'"),
    ("Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1)], normal_concat=[2], "
     "reduce_concat=[2])", "no matching cell"),
    ("Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1.0)], normal_concat=[2])",
     "integer literal"),
    ("Genotype(normal=[(lambda: 0, 0), ('sep_conv_3x3', 1)], normal_concat=[2])", "op_name"),
])
def test_bad_genotype_text_is_rejected_with_one_line(text, needle):
    with pytest.raises(DsaraError) as e:
        parse_genotype(text)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_derive_keeps_two_strongest_edges_and_ignores_none():
    ops = ["none", "skip_connect", "sep_conv_3x3"]
    alpha = torch.zeros(n_edges(2), 3)
    alpha[:, 0] = 10.0  # `none` dominates everywhere: must never be chosen
    alpha[0, 2] = 5.0   # node 0 <- state 0: sep_conv
    alpha[1, 1] = 4.0   # node 0 <- state 1: skip
    alpha[4, 2] = 6.0   # node 1 <- state 2 (node 0): sep_conv
    alpha[2, 1] = 3.0   # node 1 <- state 0: skip
    g = derive({"normal": alpha}, ops, nodes=2)
    assert g["normal"].edges == (("sep_conv_3x3", 0), ("skip_connect", 1),  # strongest first
                                 ("sep_conv_3x3", 2), ("skip_connect", 0))
    assert g["normal"].concat == (2, 3)


def _alpha_listing(cell, ops: list[str]) -> torch.Tensor:
    """Alpha under which DARTS derivation keeps `cell`'s edges, each node's first edge stronger."""
    alpha = torch.zeros(n_edges(cell.nodes), len(ops))
    if "none" in ops:
        alpha[:, ops.index("none")] = 9.0  # never kept, whatever its weight
    start = 0
    for node in range(cell.nodes):
        (op1, src1), (op2, src2) = cell.edges[2 * node: 2 * node + 2]
        alpha[start + src1, ops.index(op1)] = 6.0
        alpha[start + src2, ops.index(op2)] = 5.0
        start += node + 2
    return alpha


@pytest.mark.parametrize("name", ["DARTS_V2", "PC_DARTS", "ADVRUSH", "ARNAS"])
def test_a_derived_cell_equals_the_identical_published_one(name):
    published_g = get_published(name)
    space = dsara.load_space("darts" if "normal" in published_g.cells else "dsara")
    alphas = {t: _alpha_listing(c, space.ops) for t, c in published_g.cells.items()}
    derived = derive(alphas, space.ops, space.nodes)
    for t, cell in published_g.cells.items():  # the authors' order, edge for edge
        assert derived[t].edges == cell.edges, t
    assert derived == published_g and hash(derived) == hash(published_g)


def test_node_edges_compare_as_multisets_and_ties_go_to_the_lower_input():
    a = parse_genotype("Genotype(n=[('skip_connect', 1), ('sep_conv_3x3', 0)], n_concat=[2])")
    b = parse_genotype("Genotype(n=[('sep_conv_3x3', 0), ('skip_connect', 1)], n_concat=[2])")
    c = parse_genotype("Genotype(n=[('sep_conv_3x3', 1), ('skip_connect', 0)], n_concat=[2])")
    assert a == b and hash(a) == hash(b) and a != c
    tied = derive({"n": torch.zeros(n_edges(2), 2)}, ["skip_connect", "sep_conv_3x3"], nodes=2)
    assert [src for _, src in tied["n"].edges] == [0, 1, 0, 1]


def test_architecture_file_round_trip(tmp_path):
    arch = builtin_architecture("ARNAS")
    path = save_architecture(arch, tmp_path / "a.json")
    back = load_architecture(path)
    assert back.genotype == arch.genotype and back.macro == arch.macro
    assert json.loads(path.read_text())["schema_version"] == SCHEMA_VERSION


def test_newer_schema_version_is_refused(tmp_path):
    d = builtin_architecture("DARTS_V2").to_dict()
    d["schema_version"] = SCHEMA_VERSION + 1
    (tmp_path / "a.json").write_text(json.dumps(d))
    with pytest.raises(DsaraError, match="newer than this dsara supports.*upgrade"):
        load_architecture(tmp_path / "a.json")


def test_corrupt_and_missing_architecture_files(tmp_path):
    (tmp_path / "bad.json").write_text('{"kind": "dsara.archi')
    with pytest.raises(DsaraError, match="not valid JSON"):
        load_architecture(tmp_path / "bad.json")
    with pytest.raises(DsaraError, match="does not exist"):
        load_architecture(tmp_path / "missing.json")


def test_genotype_edge_to_missing_node_in_a_file_is_named(tmp_path):
    d = builtin_architecture("DARTS_V2").to_dict()
    d["genotype"]["normal"]["edges"][0] = ["sep_conv_3x3", 9]
    (tmp_path / "a.json").write_text(json.dumps(d))
    with pytest.raises(DsaraError, match="state 9, which does not exist"):
        load_architecture(tmp_path / "a.json")


def test_layout_and_genotype_must_agree():
    arch = builtin_architecture("DARTS_V2")
    bad = Architecture(arch.genotype, arch.macro.__class__(**{**arch.macro.__dict__, "nodes": 3}))
    with pytest.raises(DsaraError, match="nodes"):
        bad.validate()


def test_unknown_builtin_lists_the_known_ones():
    with pytest.raises(DsaraError, match="built-ins: DARTS_V2"):
        dsara.build_model("NOPE_NET")
