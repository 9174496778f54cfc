"""Retrieval memory: pure retrieval rules, the in-run memory bank, the LanceDB store and SQL."""
