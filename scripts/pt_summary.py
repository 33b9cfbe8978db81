"""How decisive a perturbation-based selection was: a summary of its pt_selection.json.

`selection = "pt"` (dsara/search/perturb.py, a simplified reconstruction of DARTS-PT) records every
decision: per edge the accuracy and loss the supernet loses when each op is removed, per node the
same for each input. This prints, per file, how many decisions there were, how many were ties on
accuracy (decided by the loss alone), and how large the winning accuracy harm was in images of the
selection set -- to compare with the binomial noise of that many images.

    python scripts/pt_summary.py runs/.../dsara-pt/seed-*/pt_selection.json [--json]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path


def summarize(record: dict) -> dict:
    n = int(record["images"])
    out = {"images": n, "measure": record.get("measure"),
           "start_error": record["start"]["error"], "end_error": record["end"]["error"]}
    for kind, key in (("ops", "ops"), ("inputs", "edges")):
        decisions = record[key]
        ties, harms = 0, []
        for d in decisions.values():
            acc = [h[0] for h in d["harm"].values()]
            best = max(acc)
            ties += sum(a == best for a in acc) > 1
            harms.append(round(best * n))
        out[kind] = {"decisions": len(decisions), "accuracy_ties": ties,
                     "winning_harm_images": sorted(harms)}
    p = 1 - out["start_error"]
    out["binomial_se_images"] = math.sqrt(n * p * (1 - p))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="+", metavar="pt_selection.json")
    ap.add_argument("--json", action="store_true", help="print JSON instead of text")
    args = ap.parse_args(argv)
    summaries = {}
    for f in args.files:
        try:
            summaries[f] = summarize(json.loads(Path(f).read_text(encoding="utf-8")))
        except (OSError, ValueError, KeyError, TypeError) as e:
            print(f"pt_summary: {f} is not a readable pt_selection.json ({type(e).__name__}: {e})",
                  file=sys.stderr)
            return 2
    if args.json:
        print(json.dumps(summaries, indent=2))
        return 0
    for f, s in summaries.items():
        print(f"{f}: {s['images']} images, measure {s['measure']}, supernet PGD error "
              f"{s['start_error']:.3f} before, {s['end_error']:.3f} after discretizing "
              f"(binomial SE {s['binomial_se_images']:.1f} images)")
        for kind in ("ops", "inputs"):
            k = s[kind]
            harms = k["winning_harm_images"]
            print(f"  {kind:<6} {k['decisions']} decisions, {k['accuracy_ties']} tied on accuracy "
                  f"(the loss decided); winning harm {min(harms)} to {max(harms)} images, "
                  f"median {harms[len(harms) // 2]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
