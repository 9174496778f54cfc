"""lrag: retrieval-augmented long-video generation with autoregressive video diffusion."""

__version__ = "0.1.0"
