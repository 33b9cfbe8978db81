"""dsara: differentiable search of accurate and robust architectures.

Public API::

    import dsara
    space = dsara.load_space("dsara", overrides={"stages.2.width": 1.5})
    model = dsara.build_model("ARNAS", cells=8, channels=16)     # or an architecture file
"""

from .version import __version__

# The public API is imported on first use (PEP 562), so that `import dsara` and `dsara --help` do
# not pay for torch; `from dsara import X` works as before.
_API = {
    "Architecture": "arch.archfile", "load_architecture": "arch.archfile",
    "resolve_architecture": "arch.archfile", "save_architecture": "arch.archfile",
    "DsaraError": "errors", "Genotype": "arch.genotype", "parse_genotype": "arch.genotype",
    "build_model": "arch.build", "SearchSpace": "arch.space", "list_spaces": "arch.space",
    "load_space": "arch.space", "Supernet": "arch.supernet", "build_supernet": "arch.supernet",
}


def __getattr__(name: str):
    if name in _API:
        import importlib

        value = getattr(importlib.import_module(f".{_API[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'dsara' has no attribute {name!r}")


__all__ = [
    "Architecture", "DsaraError", "Genotype", "SearchSpace", "Supernet", "__version__",
    "build_model", "build_supernet", "list_spaces", "load_architecture", "load_space",
    "parse_genotype", "resolve_architecture", "save_architecture",
]
