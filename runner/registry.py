"""Recipe and method registry: names to lazily imported classes.

A method yaml names its ``recipe:``; the runner looks the recipe up here and imports it only when the run starts, so
composing a config never imports torch. The config can only name recipes through this table, never an arbitrary
import path from the command line.

To add a method: write its schema (a :class:`runner.config.MethodConfig` subclass, no torch imports) next to its
recipe, add a line to :data:`METHODS`, and a yaml in ``conf/method/`` whose defaults list starts with
``/schema/method/<name>@_here_``.
"""

from __future__ import annotations

import importlib
from typing import Any

from runner.errors import ConfigError

RECIPES: dict[str, str] = {
    "sft": "recipes.sft.recipe:SFTRecipe",
    "rl": "recipes.rl.recipe:GRPORecipe",
    "probing": "recipes.probing.recipe:ProbingRecipe",
}
"""Recipe family name -> ``module:Class`` implementing :class:`recipes.base.Recipe`."""

METHODS: dict[str, tuple[str, str]] = {
    "sft": ("sft", "recipes.sft.config:SFTMethodConfig"),
    "lora": ("sft", "recipes.sft.config:LoraMethodConfig"),
    "slam": ("sft", "recipes.sft.config:SlamMethodConfig"),
    "grpo": ("rl", "recipes.rl.config:GRPOMethodConfig"),
    "oxa": ("sft", "recipes.sft.config:OxaMethodConfig"),
    "gram": ("sft", "recipes.sft.config:GramMethodConfig"),
    "mrmbench": ("probing", "recipes.probing.config:MRMBenchMethodConfig"),
    "lrhp": ("probing", "recipes.probing.config:LRHPMethodConfig"),
}
"""Method name -> (recipe family, ``module:Class`` of its config schema)."""


def _load(path: str) -> Any:
    module, _, attr = path.partition(":")
    return getattr(importlib.import_module(module), attr)


def method_schema(name: str) -> type:
    """The config schema class of method ``name``."""
    return _load(METHODS[name][1])


def schema_by_class_name(class_name: str) -> type | None:
    """The method schema whose class is named ``class_name`` (used to list valid keys in error messages)."""
    for name, (_, path) in METHODS.items():
        if path.endswith(":" + class_name):
            return method_schema(name)
    return None


def get_recipe(name: str) -> type:
    """Import and return the recipe class registered as ``name``.

    Raises:
        ConfigError: ``name`` is not a registered recipe (lists the valid ones).
    """
    if name not in RECIPES:
        raise ConfigError(f"'method.recipe' is '{name}', which is not a registered recipe; valid recipes: "
                          f"{', '.join(sorted(RECIPES))}.")
    return _load(RECIPES[name])
