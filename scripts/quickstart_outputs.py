"""A seeded synthetic quickstart (search -> train -> evaluate) and every JSON it writes, with the
values that differ from run to run taken out: for showing that a change of the code's layout
changed no result.

    python scripts/quickstart_outputs.py OLD     # old code; OLD must not exist
    python scripts/quickstart_outputs.py NEW     # new code
    cmp OLD/outputs.json NEW/outputs.json        # identical: the same numbers

The runs are CPU, one thread, deterministic. Taken out of every JSON object: wall times and
rates (keys naming time, seconds, a rate or a date), the host, versions, and the run's own folder
(replaced by OUT); everything else -- architectures, losses, accuracies, alphas, per-image
results -- stays, to the last digit.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

VOLATILE = re.compile(r"(time|seconds|_s$|per_s|date|created|started|finished|host|version|"
                      r"python|torch|platform|cpu_name|elapsed|when|^at$)", re.IGNORECASE)
SYNTH = ["--dataset", "synthetic", "--synthetic-train", "256", "--synthetic-test", "64",
         "--synthetic-size", "8"]


def clean(value, out: str):
    if isinstance(value, dict):
        return {k: clean(v, out) for k, v in value.items() if not VOLATILE.search(k)}
    if isinstance(value, list):
        return [clean(v, out) for v in value]
    if isinstance(value, str):
        return value.replace(out, "OUT")
    return value


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="a new folder for the runs and outputs.json")
    out = parser.parse_args(argv).out.resolve()
    import torch

    from dsara.cli import main as dsara

    torch.set_num_threads(1)
    if out.exists():
        print(f"{out} exists; give a new folder", file=sys.stderr)
        return 2
    steps = [
        ["search", "--space", "tiny", "--dataset", "synthetic", "--set", "synthetic.n_train=256",
         "--set", "synthetic.image_size=8", "--epochs", "2", "--stage1-epochs", "1",
         "--pgd-steps", "2", "--max-steps", "4", "--seed", "0", "--device", "cpu",
         "--out", str(out / "search")],
        ["train", str(out / "search" / "architecture.json"), *SYNTH, "--method", "trades",
         "--epochs", "1", "--steps", "2", "--batch-size", "64", "--val-size", "32", "--seed", "0",
         "--device", "cpu", "--out", str(out / "train")],
        ["evaluate", str(out / "train"), "--attacks", "clean,fgsm,pgd20", "--eps", "8/255",
         "--device", "cpu"],
    ]
    for words in steps:
        if dsara(words) != 0:
            print(f"dsara {' '.join(words)} failed", file=sys.stderr)
            return 1
    files = {}
    for path in sorted(out.rglob("*")):
        if path.suffix == ".json":
            files[str(path.relative_to(out))] = clean(json.loads(path.read_text()), str(out))
        elif path.suffix == ".jsonl":
            files[str(path.relative_to(out))] = [clean(json.loads(line), str(out))
                                                 for line in path.read_text().splitlines()]
    (out / "outputs.json").write_text(json.dumps(files, indent=1, sort_keys=True) + "\n")
    print(f"wrote {out / 'outputs.json'}: {len(files)} files' JSON without wall times")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
