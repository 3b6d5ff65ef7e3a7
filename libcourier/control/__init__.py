"""The `courier` admin command: init, adduser, start, stop, status, reload."""
