"""Every checkpoint file format: the safe reader, upstream generators, LoRA, embedder and backbone files, exporters."""
