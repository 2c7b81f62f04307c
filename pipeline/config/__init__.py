"""The run's configuration: the typed dataclasses (:mod:`.schema`), the command line and recipes
that fill them (:mod:`.cli`), and the ``--data`` entries (:mod:`.sources`). No files are read here
beyond the recipe itself."""
