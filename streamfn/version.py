"""streamfn's version, in a module of its own so that anything may import it without importing the package's
front door (and what that loads on first use)."""

__version__ = "0.1.0"
