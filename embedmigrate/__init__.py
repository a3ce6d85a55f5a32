"""embedmigrate: migrate a vector collection to a new embedding model without re-encoding it.

    from embedmigrate import commands, Translator, open_collection
"""

__version__ = "0.1.0"


def __getattr__(name):  # lazy: `import embedmigrate` stays cheap (no torch, no engines)
    if name == "Translator":
        from .translators import Translator
        return Translator
    if name == "open_collection":
        from .connectors import open_collection
        return open_collection
    if name == "commands":
        from . import commands
        return commands
    raise AttributeError(name)
