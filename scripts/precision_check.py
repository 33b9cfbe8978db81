"""Same short search in fp32 and in bf16 autocast: alpha trajectories, genotypes and wall time
side by side (see dsara/bench/precision.py).

    OMP_NUM_THREADS=2 python scripts/precision_check.py --space tiny --epochs 4 --markdown out.md
"""

from dsara.bench.precision import main

if __name__ == "__main__":
    raise SystemExit(main())
