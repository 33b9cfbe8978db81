"""Time the DSARA search step, optimized vs a plain-PyTorch reference path (see dsara/bench/search.py).

    python scripts/bench_search.py --device cuda --json bench.json --markdown bench.md
    python scripts/bench_search.py --device cpu --size small --batch 8 --steps 3 --warmup 1
"""

from dsara.bench.search import main

if __name__ == "__main__":
    raise SystemExit(main())
