"""Random architectures: genotypes drawn uniformly from a search space, the baseline every searched
cell must beat (Li & Talwalkar 2019; Yang et al., "NAS evaluation is frustratingly hard", 2020).

Every cell type, every intermediate node: two distinct inputs drawn uniformly from the states before
it (the cell's two inputs and the earlier nodes), and for each of the two edges an op drawn
uniformly from the space's ops except `none` (a derived cell never keeps `none`). Draws are
seeded with Python's own generator (`random.Random`), so a seed gives the same genotypes on every
machine and every PyTorch version; the N genotypes of one call are distinct (a repeated draw is
drawn again).

    sample_architectures("dsara", n=3, seed=0)   -> three Architectures, provenance source "random"
"""

from __future__ import annotations

import random
from pathlib import Path

from ..errors import DsaraError
from .archfile import Architecture, provenance, save_architecture
from .genotype import EDGES_PER_NODE, CellGenotype, Genotype
from .space import SearchSpace, load_space

MAX_DRAWS_PER_GENOTYPE = 1000  # a space too small for N distinct genotypes fails, not loops


def sample_cell(ops: list[str], nodes: int, rng: random.Random) -> CellGenotype:
    edges = []
    for node in range(nodes):
        for src in sorted(rng.sample(range(node + 2), EDGES_PER_NODE)):
            edges.append((rng.choice(ops), src))
    return CellGenotype(tuple(edges), tuple(range(2, nodes + 2))).validate("random cell")


def sample_genotype(space: SearchSpace, rng: random.Random) -> Genotype:
    ops = [op for op in space.ops if op != "none"]
    return Genotype({t: sample_cell(ops, space.nodes, rng) for t in space.cell_types})


def _key(genotype: Genotype) -> tuple:
    """Identity of a genotype: the same edges of every node in any order are the same cell."""
    return tuple(sorted(
        (t, tuple(tuple(sorted(c.edges[k:k + EDGES_PER_NODE]))
                  for k in range(0, len(c.edges), EDGES_PER_NODE)))
        for t, c in genotype.cells.items()))


def sample_genotypes(space: SearchSpace, n: int, seed: int) -> list[Genotype]:
    """`n` distinct genotypes of `space`; the first k of n are the k of a call with n = k."""
    if n < 1:
        raise DsaraError(f"--n must be >= 1, got {n}")
    rng, seen, out = random.Random(seed), set(), []
    for _ in range(n * MAX_DRAWS_PER_GENOTYPE):
        g = sample_genotype(space, rng)
        if _key(g) not in seen:
            seen.add(_key(g))
            out.append(g)
            if len(out) == n:
                return out
    raise DsaraError(f"space {space.name!r} has fewer than {n} distinct genotypes; ask for fewer")


def sample_architectures(space: str | Path, n: int, seed: int = 0) -> list[Architecture]:
    """`n` random architectures of `space` at its retraining size, provenance source "random"."""
    sp = load_space(space)
    return [Architecture(g, sp.final_macro(),
                         provenance(source="random", space=sp.name, seed=seed, index=i),
                         name=f"random-{sp.name}-s{seed}-{i}")
            for i, g in enumerate(sample_genotypes(sp, n, seed))]


def write_samples(space: str | Path, n: int, seed: int, out: str | Path) -> list[Path]:
    """Write `random-<i>.json` architecture files into `out`; returns their paths."""
    return [save_architecture(a, Path(out) / f"random-{i}.json")
            for i, a in enumerate(sample_architectures(space, n, seed))]
