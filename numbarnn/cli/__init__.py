"""The command-line tools (``python -m numbarnn demo|check|bench``), kept apart from the library core: each module
has ``add_arguments(parser)`` and ``run(args)``, and nothing in ``numbarnn`` itself imports them."""
