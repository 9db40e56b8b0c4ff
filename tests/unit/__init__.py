"""The fast tier (a package: its files may share a name with an end-to-end test file)."""
