"""Inference throughput of an original and a compressed network (images/s at batch 1 and 256,
the ratio, parameters, multiply-adds); the logic is `dsara.compress.throughput`.

    python scripts/bench_inference.py runs/base runs/base-gdws runs/base-lowrank --threads 1
"""

import sys

from dsara.compress.throughput import main

if __name__ == "__main__":
    sys.exit(main())
