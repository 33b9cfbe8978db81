"""Pack what a later session needs to resume the cifar10-cpu run: the study database, the logs,
every small file, the supernets the dsara-pt units still need, and the checkpoints of unfinished
units (complete units' weights are left out: their results are in the database)."""
import sqlite3, tarfile, sys
from pathlib import Path
EXP = Path("/work/main/runs/exp")
out = Path(sys.argv[1])
con = sqlite3.connect(EXP / "exp.db")
rows = con.execute("select t.trial_id, t.state, p.param_value, d.distribution_json from trials t join trial_params p on p.trial_id = t.trial_id join trial_param_distributions d on d.param_id = p.param_id").fetchall() if False else None
import optuna
optuna.logging.set_verbosity(optuna.logging.WARNING)
study = optuna.load_study(study_name="cifar10-cpu", storage=f"sqlite:///{EXP / 'exp.db'}")
complete = {t.params["unit"] for t in study.trials if t.state.name == "COMPLETE" and "unit" in t.params}
def unit_dir(key):
    parts = key.split("/")
    src, seed = parts[0], parts[1][1:]
    return f"{src}/seed-{seed}" + (f"-cell-{parts[2][1:]}" if len(parts) > 2 else "")
done_dirs = {unit_dir(k) for k in complete}
pt_done = {k.split("/")[1] for k in complete if k.startswith("dsara-pt/")}
keep, skipped = [], []
for p in sorted(EXP.rglob("*")):
    if not p.is_file() or p.name == ".dsara.lock" or p.suffix == ".lock":
        continue
    rel = p.relative_to(EXP)
    if p.suffix == ".pt":
        unit = "/".join(rel.parts[2:4]) if rel.parts[0] == "runs" else ""
        if p.name == "best.pt" or (unit in done_dirs and p.parent.name == "train"):
            skipped.append(str(rel)); continue
        if p.parent.name == "search" and unit in done_dirs:
            seed = "s" + unit.split("seed-")[1]
            if not unit.startswith("dsara/") or seed in pt_done:
                skipped.append(str(rel)); continue
    keep.append(p)
with tarfile.open(out, "w:gz") as tar:
    for p in keep:
        tar.add(p, arcname=str(Path("exp") / p.relative_to(EXP)))
print(f"{out}: {len(keep)} files, {out.stat().st_size / 1e6:.1f} MB; left out {len(skipped)}: {skipped}")
print("complete:", sorted(complete))
