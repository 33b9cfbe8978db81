"""Figures and the study report, rendered from the outputs of a real tiny search.

Every picture is decoded (PNG with PIL, SVG as XML) and must be of a sensible size and not blank.
The HTML report is opened in headless Chromium where one is installed (`browser` mark): skipped with
the reason otherwise, unless DSARA_REQUIRE_BROWSER=1, which turns the skip into a failure (CI).
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import shutil
import subprocess
import sys
import warnings
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("matplotlib")
PIL = pytest.importorskip("PIL.Image")

from dsara import DsaraError, resolve_architecture  # noqa: E402
from dsara.arch.archfile import Architecture, provenance, save_architecture  # noqa: E402
from dsara.arch.genotype import CellGenotype, Genotype  # noqa: E402
from dsara.arch.space import load_space  # noqa: E402
from dsara.cli import main  # noqa: E402
from dsara.plot import cells as cells_mod  # noqa: E402
from dsara.plot import draw_architecture, plot_search, plot_study, write_report  # noqa: E402
from dsara.plot.cells import _positions, cell_dot  # noqa: E402
from dsara.plot.search import read_jsonl  # noqa: E402
from dsara.plot.study import importances, pareto_trials  # noqa: E402

MIN_W, MIN_H = 200, 150  # pixels: smaller than any of our figures could sensibly be
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


# --- image checks -----------------------------------------------------------------------------

def assert_png(path: Path) -> None:
    with PIL.open(path) as im:
        im.verify()  # a truncated or corrupt file raises here
    with PIL.open(path) as im:
        rgb = im.convert("RGB")
    w, h = rgb.size
    assert w >= MIN_W and h >= MIN_H, f"{path.name} is only {w}x{h}"
    small = rgb.resize((min(w, 400), min(h, 300)))
    colours = small.getcolors(maxcolors=1 << 16) or [(0, None)] * (1 << 16)
    assert len(colours) >= 8, f"{path.name} has {len(colours)} colours: blank?"
    grey = np.asarray(small.convert("L"), dtype=float)
    assert grey.std() > 5, f"{path.name} has grey-level std {grey.std():.1f}: blank?"
    ink = (grey < 200).mean()
    assert ink > 0.005, f"{path.name} is {ink:.2%} ink: blank?"


def assert_svg(path: Path) -> None:
    root = ET.parse(path).getroot()
    assert root.tag.rsplit("}", 1)[-1] == "svg", f"{path.name} root is {root.tag}"
    shapes = [e for e in root.iter() if e.tag.rsplit("}", 1)[-1] in ("path", "polygon", "text",
                                                                     "ellipse", "use", "g")]
    assert len(shapes) >= 10, f"{path.name} has only {len(shapes)} drawing elements"


def assert_images(paths: list[Path]) -> None:
    assert paths
    for p in paths:
        assert p.is_file()
        (assert_png if p.suffix == ".png" else assert_svg)(p)


# --- fixtures: a real smoke study (its trials are real tiny searches), and a made-up one -------

@pytest.fixture(scope="module")
def smoke(tmp_path_factory) -> tuple[object, str]:
    """(study, storage URL): `dsara study create smoke --from smoke` + `dsara study run smoke`, i.e.
    3 trials, each a 2-epoch search (1 epoch per stage) of the tiny space on synthetic 8x8 images."""
    from dsara.study import manage
    from dsara.study.worker import run_worker

    tmp = tmp_path_factory.mktemp("smoke")
    url = f"sqlite:///{tmp / 'study.db'}"
    manage.create("smoke", "smoke", url, tmp / "artifacts")
    summary = run_worker("smoke", url, log=lambda line: None)
    assert summary.completed and not summary.failed, summary
    return manage.open_study("smoke", url).study, url


@pytest.fixture(scope="module")
def study(smoke):
    return smoke[0]


@pytest.fixture(scope="module")
def run_dir(study) -> Path:
    """The run directory of the smoke study's first trial: a real search, both stages."""
    trial = study.trials[0]
    return Path(study.user_attrs["artifact_root"]) / trial.user_attrs["run_dir"]


@pytest.fixture()
def made_up_study(run_dir):
    """An in-memory study with enough trials for importances, made-up scores, and text that must
    be escaped in a report; its trials record no run directory."""
    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    study = optuna.create_study(study_name="made<up>", directions=["maximize", "maximize"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(["clean_acc", "pgd_acc"])
    study.set_user_attr("definition", {"note": "<script>alert(1)</script>"})
    arch = json.loads((run_dir / "architecture.json").read_text())
    dists = {"lam": FloatDistribution(0.05, 0.5), "width_last": CategoricalDistribution([1.0, 2.0])}
    rng = random.Random(0)
    for _ in range(8):
        lam = 0.05 + 0.45 * rng.random()
        study.add_trial(optuna.trial.create_trial(
            params={"lam": lam, "width_last": rng.choice([1.0, 2.0])}, distributions=dists,
            values=[0.8 - 0.5 * lam + 0.02 * rng.random(), 0.1 + 0.6 * lam],
            user_attrs={"architecture": arch}))
    return study


def fake_search_run(run_dir: Path, space: str = "tiny", epochs: int = 4, stage1: int = 2,
                    seed: int = 0) -> Path:
    """A run directory in the documented format with random-walk α: for spaces too big to search
    in a test (the full dsara space: 7 ops, 4 nodes, 14 edges)."""
    sp = load_space(space)
    rng = random.Random(seed)
    ops, nodes, types = list(sp.ops), sp.nodes, list(sp.cell_types)
    n_edges = sum(2 + k for k in range(nodes))
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(json.dumps({
        "space": {"name": sp.name, "ops": ops, "nodes": nodes, "cell_types": types},
        "epochs": epochs, "stage1_epochs": stage1}))
    alphas = {t: [[1e-3 * rng.gauss(0, 1) for _ in ops] for _ in range(n_edges)] for t in types}
    history, metrics = [{"epoch": 0, "alphas": alphas}], []
    for epoch in range(1, epochs + 1):
        alphas = {t: [[a + 0.1 * rng.gauss(0, 1) for a in e] for e in es] for t, es in alphas.items()}
        history.append({"epoch": epoch, "alphas": alphas})
        genotype = {t: _derive(alphas[t], ops, nodes) for t in types}
        stage = 1 if epoch <= stage1 else 2
        metrics.append({
            "epoch": epoch, "stage": stage, "lr_w": 0.025, "train_loss_adv": 2.3 - 0.1 * epoch,
            "train_acc_adv": 0.1 + 0.02 * epoch, "val_clean_acc": 0.15 + 0.05 * epoch,
            "val_pgd_acc": 0.1 + 0.03 * epoch, "val_loss_nat": 2.2, "val_loss_adv": 2.3,
            "gamma_mean": None if stage == 1 else rng.random(),
            "alpha_entropy": {t: math.log(len(ops)) - 0.01 * epoch for t in types},
            "param_free": {t: CellGenotype.from_dict(g).parameter_free() for t, g in genotype.items()},
            "genotype": genotype, "genotype_text": Genotype.from_dict(genotype).to_text(),
            "epoch_time_s": 1.0, "images_per_s": 100.0})
    (run_dir / "alpha_history.jsonl").write_text("".join(json.dumps(h) + "\n" for h in history))
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
    arch = Architecture(Genotype.from_dict(metrics[-1]["genotype"]), sp.final_macro(),
                        provenance(source="fake search", space=sp.name), name=run_dir.name)
    save_architecture(arch, run_dir / "architecture.json")
    return run_dir


def _derive(alpha, ops, nodes) -> dict:
    edges, start = [], 0
    for node in range(nodes):
        block = alpha[start: start + node + 2]
        best = sorted(range(node + 2), key=lambda j: -max(block[j]))[:2]
        edges += [[ops[max(range(len(ops)), key=lambda o: block[j][o])], j] for j in sorted(best)]
        start += node + 2
    return {"edges": edges, "concat": list(range(2, nodes + 2))}



# --- cells ------------------------------------------------------------------------------------

def test_dot_text_has_every_edge_labelled_and_every_concat_edge():
    cell = resolve_architecture("ARNAS").genotype["robust"]
    dot = cell_dot(cell, 'title with "quotes"')
    labelled = re.findall(r"-> n(\d) \[label=\"(\w+)\"", dot)
    assert labelled == [(str(k // 2), op) for k, (op, _) in enumerate(cell.edges)]
    assert len(re.findall(r"-> out ", dot)) == len(cell.concat)
    assert 'label="title with \\"quotes\\""' in dot


@pytest.mark.parametrize("name", ["DARTS_V2", "PDARTS", "ARNAS"])
def test_fallback_layout_points_every_edge_rightwards(name):
    for cell in resolve_architecture(name).genotype.cells.values():
        pos = _positions(cell)
        assert len(set(pos.values())) == len(pos) == cell.nodes + 3  # 2 inputs, nodes, output
        for k, (_, src) in enumerate(cell.edges):
            assert pos[src][0] < pos[k // 2 + 2][0]
        assert all(pos[c][0] < pos[-1][0] for c in cell.concat)


@pytest.mark.skipif(shutil.which("dot") is None, reason="graphviz's dot is not installed "
                    "(apt-get install graphviz); the matplotlib fallback is tested without it")
def test_draw_architecture_with_graphviz(tmp_path):
    paths = draw_architecture("ARNAS", tmp_path, engine="graphviz")
    assert sorted(p.name for p in paths) == sorted(
        f"ARNAS_{t}.{f}" for t in ("accurate", "reduce", "robust") for f in ("svg", "png"))
    assert_images(paths)
    assert "dil_conv_5x5" in (tmp_path / "ARNAS_robust.svg").read_text()


def test_draw_architecture_falls_back_to_matplotlib_without_dot(tmp_path, monkeypatch):
    monkeypatch.setattr(cells_mod.shutil, "which", lambda name: None)

    real_run = cells_mod.subprocess.run

    def no_dot(cmd, *a, **k):
        # Only graphviz is forbidden: matplotlib's font cache may run fc-list on a fresh machine.
        if "dot" in Path(str(cmd[0])).name:
            raise AssertionError("graphviz must not be called without dot")
        return real_run(cmd, *a, **k)

    monkeypatch.setattr(cells_mod.subprocess, "run", no_dot)
    paths = draw_architecture("DARTS_V2", tmp_path)
    assert len(paths) == 4
    assert_images(paths)
    assert "sep_conv_3x3" in (tmp_path / "DARTS_V2_normal.svg").read_text()
    with pytest.raises(DsaraError, match="apt-get install graphviz"):
        draw_architecture("DARTS_V2", tmp_path, engine="graphviz")


def test_draw_searched_architecture_file(tmp_path, run_dir):
    paths = draw_architecture(run_dir / "architecture.json", tmp_path, formats=("png",),
                              engine="matplotlib")
    assert [p.name for p in paths] == [f"architecture_{t}.png" for t in
                                       ("accurate", "reduce", "robust")]
    assert_images(paths)


def test_missing_matplotlib_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # import fails
    with pytest.raises(DsaraError, match=re.escape('pip install "dsara[plot]"')):
        draw_architecture("ARNAS", tmp_path, engine="matplotlib")


def test_unknown_format_and_engine_are_refused(tmp_path):
    cell = CellGenotype((("skip_connect", 0), ("skip_connect", 1)), (2,))
    with pytest.raises(DsaraError, match="known: svg, png"):
        cells_mod.draw_cell(cell, tmp_path / "c", formats=("jpg",))
    with pytest.raises(DsaraError, match="known: auto, graphviz, matplotlib"):
        cells_mod.draw_cell(cell, tmp_path / "c", engine="tikz")


# --- search -----------------------------------------------------------------------------------

def test_plot_search_of_a_real_tiny_search(tmp_path, run_dir):
    paths = plot_search(run_dir, tmp_path)
    assert sorted(p.name for p in paths) == sorted(
        f"{stem}.{f}" for stem in ("search_curves", "alphas_accurate", "alphas_reduce",
                                   "alphas_robust") for f in ("svg", "png"))
    assert_images(paths)
    assert "γ*" in (tmp_path / "search_curves.svg").read_text(encoding="utf-8")


def test_plot_search_of_a_full_size_space_with_both_stages(tmp_path):
    run = fake_search_run(tmp_path / "run", space="darts", epochs=6, stage1=3)  # 8 ops, 14 edges
    paths = plot_search(run, formats=("png",))
    assert [p.parent for p in paths] == [run / "plots"] * 3
    assert_images(paths)


def test_plot_search_reads_a_run_in_progress_and_refuses_a_corrupt_one(tmp_path, run_dir):
    run = shutil.copytree(run_dir, tmp_path / "run")
    epochs = len(read_jsonl(run / "metrics.jsonl"))
    with open(run / "metrics.jsonl", "a") as fh:
        fh.write('{"epoch": 3, "sta')  # a torn last line: the search is writing it
    assert len(read_jsonl(run / "metrics.jsonl")) == epochs
    assert_images(plot_search(run, tmp_path / "p", formats=("png",)))
    with open(run / "metrics.jsonl", "a") as fh:
        fh.write('\n{"epoch": 4}\n')
    with pytest.raises(DsaraError, match=f"line {epochs + 1} is not valid JSON"):
        plot_search(run, tmp_path / "p")
    with pytest.raises(DsaraError, match="not a search run directory"):
        plot_search(tmp_path / "p", tmp_path / "q")


# --- study and report -------------------------------------------------------------------------

def test_plot_study_front_of_the_smoke_study(tmp_path, study):
    paths = plot_study(study, tmp_path)
    assert sorted(p.name for p in paths) == ["importances.png", "importances.svg", "pareto.png",
                                             "pareto.svg"]
    assert_images(paths)
    svg = (tmp_path / "pareto.svg").read_text()
    assert all(f"#{t.number}" in svg for t in study.trials)  # every trial is labelled
    assert "at least 4 complete trials" in (tmp_path / "importances.svg").read_text()


def test_pareto_ticks_are_distinct_when_the_scores_are_close(tmp_path):
    """Scores within 6.0-6.6% (a CPU-sized study) once gave "6%" seven times on the y axis."""
    import optuna

    from dsara.plot.study import pareto_figure

    study = optuna.create_study(study_name="close", directions=["maximize", "maximize"])
    for i in range(7):
        study.add_trial(optuna.trial.create_trial(values=[0.10 + 0.003 * i, 0.066 - 0.001 * i]))
    fig = pareto_figure(study)
    fig.canvas.draw()
    ax = fig.axes[0]
    for axis in (ax.xaxis, ax.yaxis):
        labels = [t.get_text() for t in axis.get_ticklabels() if t.get_text()]
        assert len(labels) >= 3 and len(set(labels)) == len(labels), labels
        assert all(label.endswith("%") for label in labels), labels
    assert_images(plot_study(study, tmp_path, formats=("png",)))


def test_importances_rank_the_parameter_that_drives_both_objectives(tmp_path, made_up_study):
    values, how = importances(made_up_study)
    assert how in ("fANOVA", "PED-ANOVA") and set(values) == {"clean_acc", "pgd_acc"}
    for imp in values.values():
        assert imp["lam"] > imp["width_last"]
    paths = plot_study(made_up_study, tmp_path, formats=("svg",))
    assert_images(paths)
    assert "width_last" in (tmp_path / "importances.svg").read_text()


def test_importances_fall_back_to_a_note_with_too_few_trials(tmp_path):
    import optuna

    s = optuna.create_study(directions=["maximize", "maximize"], study_name="two")
    for v in (0.2, 0.4):
        s.add_trial(optuna.trial.create_trial(
            params={"lam": v}, distributions={"lam": optuna.distributions.FloatDistribution(0, 1)},
            values=[v, 1 - v]))
    paths = plot_study(s, tmp_path, formats=("svg", "png"))
    assert_images(paths)
    assert "at least" in (tmp_path / "importances.svg").read_text()
    with pytest.raises(DsaraError, match="no complete trials"):
        plot_study(optuna.create_study(directions=["maximize"] * 2), tmp_path)


def _report_images(html_text: str) -> list[str]:
    return re.findall(r'<img src="([^"]*)"', html_text)


@pytest.fixture(scope="module")
def report(tmp_path_factory, study) -> Path:
    return write_report(study, tmp_path_factory.mktemp("report") / "sub" / "report.html")


def test_report_of_the_smoke_study_is_self_contained(report, study):
    text = report.read_text(encoding="utf-8")
    srcs = _report_images(text)
    best = min(len(pareto_trials(study)), 4)
    assert len(srcs) == 2 + best * (3 + 1)  # front, importances; per best trial 3 cells + curves
    assert all(s.startswith(("data:image/png;base64,", "data:image/svg+xml;base64,")) for s in srcs)
    assert not re.search(r"(src|href)=\"(?!data:)", text)  # nothing fetched from anywhere
    assert "<table" in text and text.count("<tr") == 1 + len(study.trials)
    assert "No search curves" not in text  # every run dir was found under the artifact root


def test_report_escapes_the_study_text(tmp_path, made_up_study):
    text = write_report(made_up_study, tmp_path / "r.html").read_text(encoding="utf-8")
    assert "<script" not in text and "&lt;script&gt;alert(1)" in text
    assert "Study made&lt;up&gt;" in text
    assert "No search curves: run directory (not recorded)" in text


def _chromium() -> str | None:
    return next((shutil.which(b) for b in BROWSERS if shutil.which(b)), None)


CHECK_IMAGES = """<script>
window.addEventListener("load", () => {
  const imgs = [...document.images];
  const bad = imgs.filter(i => !(i.complete && i.naturalWidth > 0 &&
                                 i.getBoundingClientRect().width > 0));
  document.title = "IMAGES " + imgs.length + " BROKEN " + bad.length;
});
</script>"""


def _open_in_chromium(browser: str, page: Path, profile: Path) -> tuple[str, str]:
    """(title set by CHECK_IMAGES, browser log) of a page loaded in headless Chromium."""
    probe = profile.parent / f"probe-{page.name}"
    probe.write_text(page.read_text(encoding="utf-8").replace("</body>", CHECK_IMAGES + "</body>"),
                     encoding="utf-8")
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
           "--no-first-run", "--disable-background-networking", "--disable-component-update",
           "--disable-sync", f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0",
           "--virtual-time-budget=5000", "--dump-dom", probe.as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    title = re.search(r"<title>([^<]*)</title>", proc.stdout)
    return (title.group(1) if title else ""), proc.stderr


@pytest.mark.browser
def test_report_opens_in_headless_chromium(tmp_path, report):
    browser = _chromium()
    if browser is None:
        if os.environ.get("DSARA_REQUIRE_BROWSER") == "1":
            pytest.fail("DSARA_REQUIRE_BROWSER=1 but no chromium on PATH (apt-get install chromium)")
        pytest.skip("no headless Chromium on PATH (apt-get install chromium); "
                    "set DSARA_REQUIRE_BROWSER=1 to make this a failure")
    n = len(_report_images(report.read_text(encoding="utf-8")))
    title, log = _open_in_chromium(browser, report, tmp_path / "profile")
    assert title == f"IMAGES {n} BROKEN 0", title
    assert not re.findall(r"CONSOLE.*(Uncaught|Error)", log), log
    # the check can fail: a broken image and a script error are both caught
    bad = tmp_path / "bad.html"
    bad.write_text('<html><body><img src="data:image/png;base64,AAAA" alt="x">'
                   "<script>notDefined();</script></body></html>")
    title, log = _open_in_chromium(browser, bad, tmp_path / "profile")
    assert title == "IMAGES 1 BROKEN 1" and "Uncaught ReferenceError" in log


# --- command line -----------------------------------------------------------------------------

def test_cli_plot_and_report(tmp_path, smoke, run_dir, capsys):
    url = smoke[1]
    assert main(["plot", "arch", "RACL", "--out", str(tmp_path / "a"), "--format", "svg"]) == 0
    assert main(["plot", "search", str(run_dir), "--out", str(tmp_path / "s"), "--format",
                 "png"]) == 0
    assert main(["plot", "study", "smoke", "--storage", url, "--out", str(tmp_path / "st"),
                 "--format", "png"]) == 0
    assert main(["report", "smoke", "--storage", url, "--out", str(tmp_path / "r.html")]) == 0
    out = capsys.readouterr().out
    assert "RACL_normal.svg" in out and "search_curves.png" in out and "pareto.png" in out
    assert (tmp_path / "r.html").stat().st_size > 10_000
    assert main(["report", "nope", "--storage", url]) == 2
    assert "studies there: smoke" in capsys.readouterr().err
    assert main(["report", "x", "--storage", "postgresql+psycopg://u:hunter2@127.0.0.1:1/db"]) == 2
    err = capsys.readouterr().err
    assert "hunter2" not in err and "u:***@" in err


# --- a training run and its evaluation ---------------------------------------------------------

@pytest.fixture(scope="module")
def train_run(tmp_path_factory) -> Path:
    """A 3-epoch resnet_tiny run on synthetic 8x8 images (lr 0.1, 0.01, 0.001), evaluated with
    the sanity checks."""
    out = tmp_path_factory.mktemp("train") / "run"
    assert main(["train", "resnet_tiny", "--dataset", "synthetic", "--synthetic-train", "96",
                 "--synthetic-test", "24", "--synthetic-size", "8", "--epochs", "3", "--steps",
                 "1", "--batch-size", "32", "--val-size", "20", "--val-steps", "2", "--device",
                 "cpu", "--out", str(out)]) == 0
    code = main(["evaluate", str(out), "--attacks", "clean,fgsm", "--sanity", "--sanity-n", "20",
                 "--device", "cpu"])
    assert code in (0, 1)  # 1: a sanity check failed on this barely trained net; still drawn
    return out


def test_evaluate_sanity_draws_accuracy_vs_eps_and_steps_beside_the_report(train_run, capsys):
    report = json.loads((train_run / "evaluation.json").read_text())
    curves = {"steps" if "steps" in c else "eps": c
              for c in (s.get("curve") for s in report["sanity"]) if c}
    assert curves["eps"]["eps"][0] == 0 and len(curves["eps"]["accuracy"]) == 5
    assert curves["steps"]["steps"] == [1, 5, 20] and len(curves["steps"]["accuracy"]) == 3
    assert_images([train_run / "evaluation_sanity.png"])
    assert main(["plot", "evaluation", str(train_run), "--out", str(train_run / "p"),
                 "--format", "png", "svg"]) == 0
    assert_images([train_run / "p" / "evaluation_sanity.png",
                   train_run / "p" / "evaluation_sanity.svg"])
    capsys.readouterr()


def test_plot_train_draws_loss_accuracy_and_learning_rate(train_run, tmp_path, capsys):
    assert main(["plot", "train", str(train_run), "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out.split()
    assert str(tmp_path / "train_curves.png") in printed
    assert str(tmp_path / "evaluation_sanity.png") in printed
    assert_images([tmp_path / "train_curves.png", tmp_path / "train_curves.svg"])
    from dsara.plot.train import curves_figure, load_train_run

    fig = curves_figure(load_train_run(train_run))
    loss, acc, lr = fig.axes
    assert [len(line.get_xdata()) for line in acc.get_lines()][:2] == [3, 3]
    assert lr.get_yscale() == "log" and list(lr.get_lines()[0].get_ydata()) == \
        pytest.approx([0.1, 0.01, 0.001])
    assert main(["plot", "train", str(tmp_path)]) == 2  # not a run directory: one line
    assert "is not a training run directory (no metrics.json)" in capsys.readouterr().err


def test_evaluation_report_embeds_the_sanity_and_training_curves(train_run, tmp_path):
    out = tmp_path / "e.html"
    assert main(["report", str(train_run), "--out", str(out)]) == 0
    text = out.read_text(encoding="utf-8")
    assert 'alt="accuracy vs eps and vs attack steps"' in text
    assert 'alt="training curves"' in text
    for i, data in enumerate(re.findall(r'src="data:image/png;base64,([^"]+)"', text)):
        import base64

        (tmp_path / f"{i}.png").write_bytes(base64.b64decode(data))
        assert_png(tmp_path / f"{i}.png")
