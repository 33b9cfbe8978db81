"""Write the training images a `dsara train` config neither trains nor validates on (the part that
``train_size`` leaves out) as PNGs without labels: an unlabeled pool for ``--method mart-ss``.

    python scripts/unlabeled_pool.py --dataset cifar10 --data-root DIR --train-size 2000 \\
        --val-size 500 --count 2000 --out pool/
"""

import argparse

from dsara.train.config import TrainConfig
from dsara.train.methods.mart_ss import write_unused_training_images


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="cifar10")
    p.add_argument("--data-root")
    p.add_argument("--train-size", type=int, required=True, help="the labeled run's train_size")
    p.add_argument("--val-size", type=int, default=1000, help="the labeled run's val_size")
    p.add_argument("--seed", type=int, default=0, help="the labeled run's seed")
    p.add_argument("--count", type=int, required=True, help="images to write")
    p.add_argument("--out", required=True, help="folder for the PNGs")
    a = p.parse_args(argv)
    cfg = TrainConfig(arch="resnet18", out="-", dataset=a.dataset, data_root=a.data_root,
                      train_size=a.train_size, val_size=a.val_size, seed=a.seed)
    n = write_unused_training_images(cfg, a.count, a.out)
    print(f"wrote {n} unlabeled images to {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
