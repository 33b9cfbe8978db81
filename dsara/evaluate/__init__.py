"""Robustness evaluation: accuracy under attacks with the worst case per image (`run`), the sanity
checks (`sanity`), attack suites that need more than the model (`suite`), the feature-squeezing
detector (`squeeze`), and where evaluation files are written (`file`)."""
