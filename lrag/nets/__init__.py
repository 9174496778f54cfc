"""Plain torch networks: no Lightning, no I/O beyond explicit ``from_pretrained`` helpers."""
