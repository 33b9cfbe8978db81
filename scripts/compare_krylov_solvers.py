"""CG vs MINRES vs GMRES for the so-krylov direction on a trained model: residual, time and the
attack's accuracy. The input Hessian is symmetric (positive semi-definite for ReLU networks), so
CG and MINRES apply; GMRES does not need symmetry and orthogonalizes against its whole basis.

    python scripts/compare_krylov_solvers.py RUN_DIR --limit 200 [--device cpu]

Prints the device, dtype (fp32), batch and repeats with every figure (logic: dsara.attacks.krylov)."""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import torch

from dsara.attacks.krylov import SOLVERS, KrylovConfig, compare_solvers, so_krylov
from dsara.data.datasets import load_dataset
from dsara.evaluate.run import prepare_for_eval
from dsara.train.checkpoint import load_trained
from dsara.utils.device import resolve_device


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_dir")
    p.add_argument("--limit", type=int, default=200, help="test images (the first N)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--eps", type=float, default=8 / 255)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--attack-iters", type=int, default=5, help="m of the attack comparison")
    args = p.parse_args()
    device = resolve_device(args.device)
    model, ckpt, _ = load_trained(args.run_dir)
    model = prepare_for_eval(model).to(device)
    cfg = ckpt["config"]
    _, test, _ = load_dataset(cfg["dataset"], cfg.get("data_root"))
    x = test.images[:args.limit].float().div(255).to(device)
    y = test.labels[:args.limit].to(device)
    print(f"device {device}, fp32, batch {len(x)}, median of {args.repeats} repeats, "
          f"torch threads {torch.get_num_threads()}")
    print(f"{'solver':<7} {'m':>3} {'time/direction':>15} {'rel. residual':>14} "
          f"{'sign(d)=sign(g)':>16}")
    for r in compare_solvers(model, x, y, repeats=args.repeats):
        print(f"{r['solver']:<7} {r['iters']:>3} {r['seconds']:>14.3f}s "
              f"{r['relative_residual']:>14.4f} {r['sign_agreement_with_g']:>16.3f}")
    print(f"\nso-krylov accuracy, {KrylovConfig().steps} steps of eps/4, m = {args.attack_iters}, "
          f"eps {args.eps * 255:.1f}/255, n = {len(x)}")
    for name in SOLVERS:
        config = replace(KrylovConfig(), solver=name, iters=args.attack_iters)
        gen = torch.Generator(device).manual_seed(0)
        start = time.perf_counter()
        x_adv = so_krylov(model, x, y, args.eps, config, generator=gen)
        seconds = time.perf_counter() - start
        with torch.no_grad():
            acc = (model(x_adv).argmax(1) == y).float().mean().item()
        print(f"{name:<7} accuracy {100 * acc:6.2f}%  {seconds:7.1f}s")


if __name__ == "__main__":
    main()
