"""Plumbing every layer may use: atomic files (`files`), devices and precision (`device`), run-
directory locks (`lock`), TOML/override parsing (`config`), progress lines (`progress`),
TensorBoard (`tensorboard`), signals (`signals`), where shipped definitions are (`resources`)."""
