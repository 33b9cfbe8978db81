import json

from dsara.cli import main


def test_arch_info_prints_cells_parameters_and_macs(capsys):
    assert main(["arch", "info", "DARTS_V2"]) == 0
    out = capsys.readouterr().out
    assert "cells         20  (C = 36)" in out
    assert "3.349 M" in out and "multiply-adds" in out


def test_arch_info_resizes_and_prints_json(capsys):
    assert main(["arch", "info", "ARNAS", "--cells", "8", "--channels", "24", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["cells"] == 8 and info["C"] == 24
    assert info["layout"] == ["accurate"] * 2 + ["RED"] + ["accurate"] * 2 + ["RED"] + ["robust"] * 2
    assert info["macs"] > 0 and 0 < info["parameters"] < info["parameters_with_auxiliary"]


def test_arch_info_of_a_file(tmp_path, capsys):
    from dsara.arch.archfile import builtin_architecture, save_architecture

    path = save_architecture(builtin_architecture("PC_DARTS"), tmp_path / "pc.json")
    assert main(["arch", "info", str(path), "--cells", "5", "--channels", "8"]) == 0
    assert "cells         5" in capsys.readouterr().out


def test_bad_names_give_one_line_and_exit_2(capsys):
    assert main(["arch", "info", "NOT_A_CELL"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("dsara: error: unknown built-in cell 'NOT_A_CELL'")
    assert err.count("\n") == 1


def test_arch_list(capsys):
    assert main(["arch", "list"]) == 0
    out = capsys.readouterr().out
    assert "DARTS_V2" in out and "space dsara" in out
