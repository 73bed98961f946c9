"""Multi-objective architecture search over dynamic-parameter layers: ``python -m search --help``."""
