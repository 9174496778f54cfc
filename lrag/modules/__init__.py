"""LightningModules (what is trained or sampled) and the plain pieces they compose."""
