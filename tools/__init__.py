"""Development tools of this repository (not shipped in the package)."""
