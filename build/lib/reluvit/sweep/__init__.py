"""Sweeps: sweep files expanded into points, executed here or on SLURM through submitit."""
