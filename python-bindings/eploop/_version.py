"""The package version; kept equal to the crate's version in ../Cargo.toml (a test checks)."""

__version__ = "0.1.0"
