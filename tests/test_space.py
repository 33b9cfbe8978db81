import subprocess
import sys
import zipfile

import pytest
import torch

from dsara import DsaraError, list_spaces, load_space
from dsara.arch.genotype import CellGenotype, Genotype, get_published
from dsara.arch.network import Network
from dsara.arch.space import share_depths


def test_registered_spaces_include_the_published_layouts():
    assert {"darts", "dsara", "tiny"} <= set(list_spaces())


def test_dsara_proxy_layout_matches_the_reference():
    macro = load_space("dsara").proxy_macro()
    plan = macro.cell_plan()
    assert [("RED" if c.reduction else c.cell_type[:3]) for c in plan] == \
        ["acc", "acc", "RED", "acc", "acc", "RED", "rob", "rob"]
    assert [c.C for c in plan] == [24, 24, 48, 48, 48, 48, 48, 48]
    assert macro.cells == 8


def test_darts_final_layout_is_20_cells_36_channels_widths_1_2_4():
    macro = load_space("darts").final_macro()
    assert macro.cells == 20 and macro.C == 36
    assert [s.depth for s in macro.stages] == [6, 6, 6]
    assert [macro.stage_channels(s) for s in macro.stages] == [36, 72, 144]
    assert macro.auxiliary_weight == 0.4


def test_overrides_from_python_and_strings():
    sp = load_space("dsara", overrides={"stages.2.width": 1.5, "proxy.C": 16})
    assert sp.stages[2].width == 1.5 and sp.proxy_C == 16
    sp = load_space("dsara", overrides=["stages.0.depth=3", 'stages.2.cell_type="accurate"'])
    assert sp.stages[0].depth == 3 and sp.stages[2].cell_type == "accurate"


@pytest.mark.parametrize("base,total,expected", [
    ([2, 2, 2], 18, [6, 6, 6]),
    ([2, 2, 1], 16, [7, 6, 3]),
    ([1, 1, 1], 3, [1, 1, 1]),
])
def test_share_depths_keeps_proportions_and_total(base, total, expected):
    got = share_depths(base, total)
    assert sum(got) == total and got == expected


def _write(tmp_path, text):
    p = tmp_path / "space.toml"
    p.write_text(text)
    return p


BASE = """
name = "t"
ops = {ops}
cell_types = ["normal", "reduce"]
nodes = 2
[[stages]]
depth = 1
width = {width}
cell_type = "{ct}"
[[stages]]
depth = 1
width = 2.0
cell_type = "normal"
[proxy]
C = 4
[final]
C = 8
cells = 5
"""


def good(**kw):
    args = {"ops": '["skip_connect", "sep_conv_3x3"]', "width": "1.0", "ct": "normal"} | kw
    return BASE.format(**args)


def test_a_valid_file_loads_by_path(tmp_path):
    sp = load_space(_write(tmp_path, good()))
    assert sp.name == "t" and sp.proxy_macro().cells == 3


@pytest.mark.parametrize("text,needle", [
    (good(ops='["skip_connect", "conv_9x9"]'), "unknown op 'conv_9x9'"),
    (good(ct="robust"), "unknown cell type 'robust'; known cell types: normal, reduce"),
    (good(width="0.0"), "width"),
    (good(width="-1"), "width"),
    (good().replace("[proxy]", "[proxy\n"), "malformed TOML"),
    (good().replace("nodes = 2", "nodes = 2\nwidht = 3"), "unknown key 'widht'"),
])
def test_bad_space_files_give_one_clear_line(tmp_path, text, needle):
    path = _write(tmp_path, text)
    with pytest.raises(DsaraError) as e:
        load_space(path)
    msg = str(e.value)
    assert needle in msg and "\n" not in msg
    assert str(path) in msg or "unknown op" in msg


def test_unknown_op_lists_the_known_ones(tmp_path):
    with pytest.raises(DsaraError, match="known ops: none, skip_connect"):
        load_space(_write(tmp_path, good(ops='["conv_9x9"]')))


def test_unknown_space_name_lists_known_spaces():
    with pytest.raises(DsaraError, match="known spaces: .*dsara"):
        load_space("no_such_space")


def test_bad_override_key_is_named():
    with pytest.raises(DsaraError, match="stages.7"):
        load_space("dsara", overrides={"stages.7.width": 1.0})


def test_spaces_work_by_name_after_a_plain_non_editable_install(tmp_path):
    """Build the wheel, install it into a folder, and load a space from an unrelated cwd."""
    repo = __import__("pathlib").Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(tmp_path / "whl"), str(repo)], check=True)
    wheel = next((tmp_path / "whl").glob("dsara-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    sources = {str(p.relative_to(repo)) for p in (repo / "dsara").rglob("*.py")}
    assert not sources - set(names), f"modules missing from the wheel: {sources - set(names)}"
    assert "dsara/_data/search_spaces/dsara.toml" in names
    assert "dsara/_data/studies/smoke.toml" in names
    assert "dsara/arch/published_cells.txt" in names
    target = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(target)
    code = ("import dsara, dsara.cli, dsara.study.definition as d; "
            "print(dsara.load_space('dsara').name, len(dsara.list_spaces()), dsara.__file__)")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                         text=True, env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    name, count, origin = out.stdout.split()
    assert name == "dsara" and int(count) >= 3
    assert origin.startswith(str(target)), "the test must import the installed copy"


def _aux_input_side(model, side: int = 32) -> int:
    """Spatial size of what the auxiliary head sees, from a real train-mode forward."""
    seen = []
    hook = model.auxiliary_head.register_forward_hook(lambda m, i, o: seen.append(i[0].shape[-1]))
    model.train()
    with torch.no_grad():
        model(torch.rand(2, 3, side, side), return_aux=True)
    hook.remove()
    return seen[0]


@pytest.mark.parametrize("space", list_spaces())
def test_layout_at_8_to_20_cells_reductions_and_aux_head(space):
    sp = load_space(space)
    genotype = Genotype({t: CellGenotype((("skip_connect", 0), ("skip_connect", 1)) * sp.nodes,
                                         tuple(range(2, sp.nodes + 2))) for t in sp.cell_types})
    equal = len({s.depth for s in sp.stages}) == 1
    for cells in range(8, 21):
        macro = sp.final_macro().resized(cells=cells, channels=4)
        plan = macro.cell_plan()
        red = [i for i, c in enumerate(plan) if c.reduction]
        assert len(plan) == cells and len(red) == len(sp.stages) - 1
        if equal:  # DARTS: reductions at L//3 and 2L//3
            assert red == [cells // 3, 2 * cells // 3], cells
        model = Network(genotype, macro)
        assert model.aux_index == red[-1], cells  # right after the last reduction cell
        assert _aux_input_side(model) == 8, cells  # 32 -> 16 -> 8


def test_darts_16_and_robustwrn_18_cells():
    darts = load_space("darts").final_macro().resized(cells=16).cell_plan()
    assert [i for i, c in enumerate(darts) if c.reduction] == [5, 10]
    rwrn = load_space("robustwrn").final_macro()  # 18 cells, stages 2:2:1 -> 7:6:3
    assert [s.depth for s in rwrn.stages] == [7, 6, 3]
    assert Network(get_published("ARNAS"), rwrn).aux_index == 14
