"""A/B evaluation of retrieval: torchmetrics Metrics and reports."""
