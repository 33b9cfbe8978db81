"""DSARA's two-stage differentiable search: `run(SearchConfig(...)) -> SearchResult`."""

from .config import SearchConfig, load_search_config
from .loop import SearchResult, run

__all__ = ["SearchConfig", "SearchResult", "load_search_config", "run"]
