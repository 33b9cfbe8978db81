"""dsara: differentiable search of accurate and robust architectures.

Public API::

    import dsara
    space = dsara.load_space("dsara", overrides={"stages.2.width": 1.5})
    model = dsara.build_model("ARNAS", cells=8, channels=16)     # or an architecture file
"""

__version__ = "0.1.0"

from .archfile import Architecture, load_architecture, resolve_architecture, save_architecture
from .errors import DsaraError
from .genotype import Genotype, parse_genotype
from .models import build_model
from .space import SearchSpace, list_spaces, load_space
from .supernet import Supernet, build_supernet

__all__ = [
    "Architecture", "DsaraError", "Genotype", "SearchSpace", "Supernet", "__version__",
    "build_model", "build_supernet", "list_spaces", "load_architecture", "load_space",
    "parse_genotype", "resolve_architecture", "save_architecture",
]
