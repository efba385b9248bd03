"""mlc_utils: the tested library behind the mlc notebooks (multi-label image+caption classification)."""
__version__ = "0.1.0"
