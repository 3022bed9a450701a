"""The training demo: recipes as data, offline datasets, the training loop and the CLI."""
