"""Time one training step of every registered method, as a ratio to PGD-AT on the same batch and
machine (logic in dsara/train/methods/bench.py).

    OMP_NUM_THREADS=1 python scripts/bench_methods.py --device cpu --rounds 5 --json methods.json
"""

from dsara.bench.methods import main

if __name__ == "__main__":
    raise SystemExit(main())
