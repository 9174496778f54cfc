"""One video run on disk and in the store: outputs, store rows, resume, lease, compatibility with older configs."""
