"""qmdd: a local search engine daemon for your documents."""

__version__ = "0.1.0"
