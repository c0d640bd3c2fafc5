"""Atoll: decentralized diffusion experts, trained on islands, served as one model."""

__version__ = "0.1.0"
