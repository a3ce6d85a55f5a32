"""embedmigrate: migrate a vector collection to a new embedding model without re-encoding it.

    from embedmigrate import commands, Translator, open_collection
"""

import importlib

__version__ = "0.1.0"

_LAZY = {"Translator": ("embedmigrate.translators", "Translator"),
         "open_collection": ("embedmigrate.connectors", "open_collection")}


def __getattr__(name):  # lazy: `import embedmigrate` stays cheap (no torch, no engines)
    if name in _LAZY:
        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    if name == "commands":
        return importlib.import_module("embedmigrate.commands")
    raise AttributeError(name)
