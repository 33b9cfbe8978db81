"""Architectures: the building blocks (`ops`, `activations`, `compressed`), search spaces
(`space`), cells (`genotype`), architecture files (`archfile`), random cells (`sample`), the
discrete network (`network`), the supernet (`supernet`), hand-designed baselines (`baselines`),
building any of them by name (`build`), parameter counts (`profile`) and budgets (`budget`)."""
