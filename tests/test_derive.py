"""`dsara arch derive` / search.derive: a search's cells derived again from its saved alpha."""

import json
import shutil
from pathlib import Path

import pytest

from dsara.arch.archfile import load_architecture
from dsara.cli import main
from dsara.errors import DsaraError
from dsara.search.derive import rederive

LAYOUT_V0 = Path(__file__).parent / "data" / "layout-v0"


def _copy(tmp_path, name):
    return Path(shutil.copytree(LAYOUT_V0 / name, tmp_path / name))


@pytest.mark.parametrize("name, source", [("search", "checkpoint.pt"),
                                          ("done", "alpha_history.jsonl")])
def test_without_a_cap_it_reproduces_the_searchs_own_cells(tmp_path, name, source):
    run = _copy(tmp_path, name)
    r = rederive(run)
    assert r.source == source and r.changed() == []
    assert r.architecture.genotype == load_architecture(run / "architecture.json").genotype
    assert r.architecture.macro == r.searched.macro
    assert r.architecture.provenance["rederived"]["alpha_from"] == source


def _plant_skips(run: Path) -> None:
    """Every edge of every cell type strongly prefers skip_connect (op 0 of the tiny space)."""
    lines = (run / "alpha_history.jsonl").read_text().splitlines()
    last = json.loads(lines[-1])
    for t, rows in last["alphas"].items():
        last["alphas"][t] = [[5.0] + [0.0] * (len(r) - 1) for r in rows]
    (run / "alpha_history.jsonl").write_text("\n".join(lines[:-1] + [json.dumps(last)]) + "\n")


def test_the_skip_cap_binds_in_the_normal_cells_only(tmp_path, capsys):
    run = _copy(tmp_path, "done")
    _plant_skips(run)
    plain = rederive(run)
    assert all(op == "skip_connect" for c in plain.architecture.genotype.cells.values()
               for op, _ in c.edges)
    capped = rederive(run, skip_cap=1)
    cells = capped.architecture.genotype.cells
    for t in ("accurate", "robust"):
        assert sum(op == "skip_connect" for op, _ in cells[t].edges) == 1
    assert cells["reduce"] == plain.architecture.genotype.cells["reduce"]  # reduction: no cap
    assert sorted(capped.changed()) == ["accurate", "reduce", "robust"]  # vs the searched cells

    out = tmp_path / "capped.json"
    assert main(["arch", "derive", str(run), "--skip-cap", "1", "--out", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["cells"]["accurate"]["skip_connect"] == 1
    assert summary["cells"]["reduce"]["skip_connect"] == 4
    written = load_architecture(out)
    assert written.genotype == capped.architecture.genotype
    assert written.provenance["rederived"]["skip_cap"] == 1


def test_it_never_overwrites_and_says_why_in_one_line(tmp_path, capsys):
    run = _copy(tmp_path, "done")
    own = (run / "architecture.json").read_bytes()
    assert main(["arch", "derive", str(run), "--out", str(run / "architecture.json"),
                 "--force"]) == 2
    assert "the search's own architecture file" in capsys.readouterr().err
    assert (run / "architecture.json").read_bytes() == own
    other = tmp_path / "other.json"
    other.write_text("keep me")
    assert main(["arch", "derive", str(run), "--out", str(other)]) == 2
    err = capsys.readouterr().err
    assert "exists" in err and err.count("\n") == 1
    assert other.read_text() == "keep me"
    assert main(["arch", "derive", str(run), "--out", str(other), "--force"]) == 0
    assert load_architecture(other).genotype == load_architecture(run / "architecture.json").genotype


def test_partial_channels_without_a_checkpoint_are_refused(tmp_path):
    run = _copy(tmp_path, "done")
    cfg = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**cfg, "partial_k": 2}))
    with pytest.raises(DsaraError, match="edge betas only the checkpoint holds"):
        rederive(run)


def test_a_folder_without_a_search_is_refused(tmp_path, capsys):
    assert main(["arch", "derive", str(tmp_path)]) == 2
    assert "holds no search (no config.json)" in capsys.readouterr().err
    run = _copy(tmp_path, "done")
    (run / "alpha_history.jsonl").unlink()
    with pytest.raises(DsaraError, match="nothing to derive from"):
        rederive(run)
