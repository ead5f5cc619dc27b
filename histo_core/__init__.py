"""histo_core: datasets, training, evaluation and explanation of histopathology tile classifiers.

Pure Python/PyTorch; never imports Streamlit. The Streamlit pages and the CLI (`python -m histo_core`)
are thin layers over this package.
"""

__version__ = "0.2.0"
