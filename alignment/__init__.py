"""Layerwise brain alignment: features from models, encoders to fMRI, statistics and reports.

The package is a library of pure functions over labelled arrays (xarray) with thin
scikit-learn-style estimators on top; the Snakemake workflow calls it through ``alignment.cli``.
"""

__version__ = "0.1.0"
