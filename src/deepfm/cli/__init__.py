"""Command line: ``deepfm <command>``; one module per command, wired in ``main``."""
