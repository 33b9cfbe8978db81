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


class _Perturbation:
    """The state of one selection: the mixing weights as decided so far, the current score."""

    def __init__(self, net, images, labels, eps, step_size, steps, measure, seed):
        self.net, self.images, self.labels = net, images, labels
        self.attack, self.measure, self.seed = (eps, step_size, steps), measure, seed
        self.ops = net.ops
        self.allowed = [i for i, op in enumerate(self.ops) if op != "none"]
        self.weights = {t: torch.softmax(a.detach().float(), dim=-1) for t, a in net.alphas.items()}
        self.evaluations = 0
        self.base = self.score(self.weights)

    def score(self, w: dict[str, torch.Tensor]) -> tuple[float, float]:
        """(adversarial error, adversarial loss) of the supernet mixed by `w`: higher is worse."""
        self.evaluations += 1
        eps, step_size, steps = self.attack
        model = _Fixed(self.net, w)
        gen = torch.Generator(device=self.images.device).manual_seed(self.seed)
        x = pgd(model, self.images, self.labels, eps, step_size, steps, generator=gen) \
            if eps > 0 and steps > 0 else self.images
        with torch.no_grad():
            logits = model(x).float()
        return ((logits.argmax(1) != self.labels).float().mean().item(),
                F.cross_entropy(logits, self.labels).item())

    def harm_of_removing(self, cell_type: str, edge: int, op: int | None = None
                         ) -> tuple[float, ...]:
        """How much zeroing `op` on `edge` (the whole edge if None) hurts, as a sort key."""
        w = {k: v.clone() for k, v in self.weights.items()}
        if op is None:
            w[cell_type][edge] = 0.0
        else:
            w[cell_type][edge, op] = 0.0
        removed = self.score(w)
        d_err, d_loss = removed[0] - self.base[0], removed[1] - self.base[1]
        return (d_loss,) if self.measure == "loss" else (d_err, d_loss)

    def choose_op(self, cell_type: str, edge: int) -> tuple[int, dict[int, tuple]]:
        """Discretize `edge` to the op whose removal hurts most (ties: the earlier op)."""
        harms = {o: self.harm_of_removing(cell_type, edge, o) for o in self.allowed}
        best = max(self.allowed, key=lambda o: (harms[o], -o))
        self.weights[cell_type][edge] = F.one_hot(torch.tensor(best), len(self.ops)).to(
            self.weights[cell_type])
        self.base = self.score(self.weights)
        return best, harms

    def choose_inputs(self, cell_type: str, inputs: list[int]) -> tuple[list[int], dict]:
        """Keep the EDGES_PER_NODE input edges whose removal hurts most (ties: lower input)."""
        if len(inputs) <= EDGES_PER_NODE:
            return inputs, {e: (0.0,) for e in inputs}
        harms = {e: self.harm_of_removing(cell_type, e) for e in inputs}
        keep = sorted(inputs, key=lambda e: (tuple(-h for h in harms[e]), e))[:EDGES_PER_NODE]
        for e in inputs:
            if e not in keep:
                self.weights[cell_type][e] = 0.0
        self.base = self.score(self.weights)
        return keep, harms


def select(net, images: torch.Tensor, labels: torch.Tensor, eps: float, step_size: float,
           steps: int, measure: str = "accuracy", seed: int = 0,
           log: Callable[[str], None] | None = None) -> tuple[Genotype, dict[str, Any]]:
    """(the cells chosen by perturbation, a record of every decision) for the trained supernet
    `net` on `images` (float in [0, 1], on the net's device) and `labels`."""
    if measure not in MEASURES:
        raise ValueError(f"pt measure must be one of {MEASURES}, got {measure!r}")
    was_training = net.training
    grads = [p.requires_grad for p in net.parameters()]
    for p in net.parameters():  # the attack needs input gradients only
        p.requires_grad_(False)
    net.train()  # batch statistics, as during the search
    try:
        pt = _Perturbation(net, images, labels, eps, step_size, steps, measure, seed)
        record: dict[str, Any] = {
            "measure": measure, "images": int(len(labels)), "eps": eps, "steps": steps,
            "fine_tuning": False, "ops": {}, "edges": {},
            "start": {"error": pt.base[0], "loss": pt.base[1]}}
        chosen = _choose_ops(pt, record, seed, log)
        cells = {t: _choose_topology(pt, t, chosen[t], net.macro.nodes, record)
                 for t in pt.weights}
        record["end"] = {"error": pt.base[0], "loss": pt.base[1]}
        record["evaluations"] = pt.evaluations
    finally:
        for p, g in zip(net.parameters(), grads):
            p.requires_grad_(g)
        net.train(was_training)
    return Genotype(cells), record


def _choose_ops(pt: _Perturbation, record, seed: int, log) -> dict[str, dict[int, int]]:
    """1. The op of every edge, edges in a seeded random order over all cell types."""
    order = [(t, e) for t in pt.weights for e in range(pt.weights[t].shape[0])]
    gen = torch.Generator().manual_seed(seed)
    order = [order[i] for i in torch.randperm(len(order), generator=gen).tolist()]
    chosen: dict[str, dict[int, int]] = {t: {} for t in pt.weights}
    for t, e in order:
        best, harms = pt.choose_op(t, e)
        chosen[t][e] = best
        record["ops"][f"{t}/{e}"] = {"op": pt.ops[best],
                                     "harm": {pt.ops[o]: list(h) for o, h in harms.items()}}
        if log:
            log(f"  pt: {t} edge {e} -> {pt.ops[best]}")
    return chosen


def _choose_topology(pt: _Perturbation, cell_type: str, chosen: dict[int, int], nodes: int,
                     record) -> CellGenotype:
    """2. The two input edges of every node of one cell type, node by node."""
    edges, start = [], 0
    for node in range(nodes):
        inputs = list(range(start, start + node + 2))
        keep, harms = pt.choose_inputs(cell_type, inputs)
        record["edges"][f"{cell_type}/node{node}"] = {
            "kept": [e - start for e in keep],
            "harm": {str(e - start): list(h) for e, h in harms.items()}}
        edges += [(pt.ops[chosen[e]], e - start) for e in keep]
        start += node + 2
    return CellGenotype(tuple(edges), tuple(range(2, nodes + 2)))


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
    from ..utils.device import use_channels_last

    device = next(net.parameters()).device
    images, labels = selection_images(cfg, device)
    if use_channels_last(cfg.channels_last, device):  # the search's layout: 2x faster on a CPU
        net.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    return select(net, images, labels, cfg.eps, cfg.step_size, cfg.pgd_steps, cfg.pt_measure,
                  cfg.seed, log)
