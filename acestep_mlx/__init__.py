"""ACE-Step v1 music generation on Apple MLX."""

__version__ = "0.1.0"
