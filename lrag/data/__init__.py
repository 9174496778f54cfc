"""Latent shards (WebDataset), procedural data and LightningDataModules."""
