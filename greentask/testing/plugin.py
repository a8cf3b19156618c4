"""pytest plugin for greentask (registered through the ``pytest11`` entry point)."""
