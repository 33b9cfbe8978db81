"""Perturbation-based architecture selection: a simplified RECONSTRUCTION of DARTS-PT.

DARTS-PT (Wang, Cheng, Chen, Tang, Hsieh, "Rethinking Architecture Selection in Differentiable
NAS", ICLR 2021) observes that the magnitude of alpha does not tell how much an op contributes to
the supernet -- the reason DARTS-style searches end in cells full of parameter-free ops -- and
selects instead by what the supernet loses when an op is taken away. Their algorithm, on the
trained supernet: visit the edges in random order; on each, remove every op in turn, keep the op
whose removal hurts validation accuracy most and discretize the edge to it; fine-tune the supernet
for a few epochs between decisions; then choose each node's two input edges the same way (the
edges whose removal hurts most).

What dsara implements (selection = "pt", opt-in; the default is DARTS' magnitude derivation):
- the op choice and the topology choice as above, progressively (each decision discretizes the
  supernet the later ones see), edges in an order seeded by the search seed;
- **no fine-tuning between decisions** (the supernet weights are the searched ones throughout) --
  the paper's ablation runs PT with fine-tuning; this is the cheaper variant;
- the measure is **adversarial**: accuracy under the search's own PGD (its eps, step size and
  steps; a clean search measures clean accuracy) on `pt_images` fixed, class-stratified images of
  the architecture-validation half, the same random start for every evaluation (common random
  numbers), ties broken by the increase of the cross-entropy; `pt_measure = "loss"` ranks by the
  loss increase alone (finer on few images);
- "removing" an op sets its mixing weight to 0 without renormalising (as their code's masks do);
  BatchNorm uses the batch's statistics, as during the search.

Cost: (cell types x edges x ops + the topology candidates) evaluations of the supernet, each a PGD
attack on `pt_images` images: minutes on a CPU for the CPU-sized proxy.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..arch.genotype import EDGES_PER_NODE, CellGenotype, Genotype
from ..attacks.gradient import pgd

MEASURES = ("accuracy", "loss")


class _Fixed(nn.Module):
    """The supernet with fixed per-cell-type mixing weights (what the attack sees)."""

    def __init__(self, net, weights: dict[str, torch.Tensor]):
        super().__init__()
        self.net, self.weights = net, weights

    def forward(self, x):
        return self.net(x, self.weights)


def select(net, images: torch.Tensor, labels: torch.Tensor, eps: float, step_size: float,
           steps: int, measure: str = "accuracy", seed: int = 0,
           log: Callable[[str], None] | None = None) -> tuple[Genotype, dict[str, Any]]:
    """(the cells chosen by perturbation, a record of every decision) for the trained supernet
    `net` on `images` (float in [0, 1], on the net's device) and `labels`."""
    if measure not in MEASURES:
        raise ValueError(f"pt measure must be one of {MEASURES}, got {measure!r}")
    ops, nodes = net.ops, net.macro.nodes
    allowed = [i for i, op in enumerate(ops) if op != "none"]
    was_training = net.training
    grads = [p.requires_grad for p in net.parameters()]
    for p in net.parameters():  # the attack needs input gradients only
        p.requires_grad_(False)
    net.train()  # batch statistics, as during the search
    weights = {t: torch.softmax(a.detach().float(), dim=-1) for t, a in net.alphas.items()}
    count = [0]

    def score(w: dict[str, torch.Tensor]) -> tuple[float, float]:
        """(adversarial error, adversarial loss) of the supernet mixed by `w`: higher is worse."""
        count[0] += 1
        model = _Fixed(net, w)
        gen = torch.Generator(device=images.device).manual_seed(seed)
        x = pgd(model, images, labels, eps, step_size, steps, generator=gen) \
            if eps > 0 and steps > 0 else images
        with torch.no_grad():
            logits = model(x).float()
        return ((logits.argmax(1) != labels).float().mean().item(),
                F.cross_entropy(logits, labels).item())

    def harm(removed: tuple[float, float], base: tuple[float, float]) -> tuple[float, ...]:
        """How much a removal hurts, as a sort key (larger hurts more)."""
        d_err, d_loss = removed[0] - base[0], removed[1] - base[1]
        return (d_loss,) if measure == "loss" else (d_err, d_loss)

    record: dict[str, Any] = {"measure": measure, "images": int(len(labels)), "eps": eps,
                              "steps": steps, "fine_tuning": False, "ops": {}, "edges": {}}
    try:
        base = score(weights)
        record["start"] = {"error": base[0], "loss": base[1]}
        # 1. the op of every edge, edges in a seeded random order over all cell types
        order = [(t, e) for t in weights for e in range(weights[t].shape[0])]
        gen = torch.Generator().manual_seed(seed)
        order = [order[i] for i in torch.randperm(len(order), generator=gen).tolist()]
        chosen: dict[str, dict[int, int]] = {t: {} for t in weights}
        for t, e in order:
            harms = {}
            for o in allowed:
                w = {k: v.clone() for k, v in weights.items()}
                w[t][e, o] = 0.0
                harms[o] = harm(score(w), base)
            best = max(allowed, key=lambda o: (harms[o], -o))  # ties: the earlier op
            weights[t][e] = F.one_hot(torch.tensor(best), len(ops)).to(weights[t])
            chosen[t][e] = best
            base = score(weights)
            record["ops"][f"{t}/{e}"] = {"op": ops[best],
                                         "harm": {ops[o]: list(h) for o, h in harms.items()}}
            if log:
                log(f"  pt: {t} edge {e} -> {ops[best]}")
        # 2. the two input edges of every node (nodes with more than two inputs)
        cells = {}
        for t in weights:
            kept_all, start = [], 0
            for node in range(nodes):
                n_in = node + 2
                inputs = list(range(start, start + n_in))
                if n_in <= EDGES_PER_NODE:
                    harms = {e: (0.0,) for e in inputs}
                else:
                    harms = {}
                    for e in inputs:
                        w = {k: v.clone() for k, v in weights.items()}
                        w[t][e] = 0.0
                        harms[e] = harm(score(w), base)
                keep = sorted(inputs, key=lambda e: (tuple(-h for h in harms[e]), e))
                keep = keep[:EDGES_PER_NODE]  # hurts most first, ties to the lower input
                for e in inputs:
                    if e not in keep:
                        weights[t][e] = 0.0
                if n_in > EDGES_PER_NODE:
                    base = score(weights)
                record["edges"][f"{t}/node{node}"] = {
                    "kept": [e - start for e in keep],
                    "harm": {str(e - start): list(h) for e, h in harms.items()}}
                kept_all += [(ops[chosen[t][e]], e - start) for e in keep]
                start += n_in
            cells[t] = CellGenotype(tuple(kept_all), tuple(range(2, nodes + 2)))
        record["end"] = {"error": base[0], "loss": base[1]}
        record["evaluations"] = count[0]
    finally:
        for p, g in zip(net.parameters(), grads):
            p.requires_grad_(g)
        net.train(was_training)
    return Genotype(cells), record


def selection_images(cfg, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """`cfg.pt_images` fixed, class-stratified images (float, [0, 1]) and labels of the search's
    architecture-validation half (its data, split and data seed)."""
    from ..data.datasets import SyntheticConfig, load_dataset
    from ..data.split import split_train, stratified_subset

    synthetic = SyntheticConfig(**cfg.synthetic) if cfg.dataset == "synthetic" else None
    train, _, _ = load_dataset(cfg.dataset, cfg.data_root, cfg.download, synthetic=synthetic)
    _, a_val = split_train(train, cfg.arch_fraction, cfg.data_seed)
    chosen, _ = stratified_subset(a_val, cfg.pt_images, cfg.data_seed)
    return (chosen.images.to(device).float().div_(255), chosen.labels.to(device))


def select_for(cfg, net, log: Callable[[str], None] | None = None
               ) -> tuple[Genotype, dict[str, Any]]:
    """`select` on a trained supernet with a search config's data and attack."""
    device = next(net.parameters()).device
    images, labels = selection_images(cfg, device)
    return select(net, images, labels, cfg.eps, cfg.step_size, cfg.pgd_steps, cfg.pt_measure,
                  cfg.seed, log)
