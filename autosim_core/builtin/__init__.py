"""The core's built-in plugins as its entry points name them, registered exactly as a third
party's: light modules whose objects import their implementation (``autosim_core.searchers``,
``blackbox``, ``estimators``, ``toy``, and torch with them) on first use, so that finding the
installed plugins (``autosim list``, a config check) imports no torch. See docs/plugins.md,
"Light entry points".
"""
