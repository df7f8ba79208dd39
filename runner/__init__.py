"""The runner: a Hydra-configured experiment runner for LLM research.

`runner/` is the framework (config, launch, models, data, metrics, outputs); it knows no method.
Recipes live in `recipes/` and are reached only through :mod:`runner.registry`.
"""

__version__ = "0.1.0"
