"""dlenv: reproducible, containerized deep-learning environments from short YAML stack specs."""

__version__ = "0.1.0"
