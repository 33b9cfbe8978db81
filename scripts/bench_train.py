"""Time one adversarial training step and one PGD-20 evaluation batch, optimized vs a plain-PyTorch
reference path (see dsara/bench/train.py).

    python scripts/bench_train.py --device cuda --batch 128 --json train.json --markdown train.md
    python scripts/bench_train.py --device cpu --size small --batch 32 --steps 3 --warmup 1
"""

from dsara.bench.train import main

if __name__ == "__main__":
    raise SystemExit(main())
