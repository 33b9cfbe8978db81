"""Data files (search spaces, study definitions) installed with the package."""
