"""Parity cases, one module per reference (see acestep_mlx.parity.CASES)."""
