"""Evaluation: feature distances, feature networks, reference statistics, exact metrics, plots.

- `metrics`: Frechet distance, KID, precision/recall on any feature arrays (float64).
- `features`: `get_feature_extractor("fid" | "fd-lenet" | "fd-lenet-fashion")`.
- `reference`: cached mean/covariance of dataset features (`compute_reference_stats`).
- `scores`: `FeatureScorer`/`feature_metrics`: named metrics of images against a reference split.
- `lenet`: the small feature networks shipped in `difflab/assets` and how to retrain them.
- `oracle_metrics`, `likelihood`: exact metrics on Gaussian-mixture oracles, ELBO in bits/dim.
- `plots`: quality-vs-NFE curves and sample rows as PNG.

Submodules are imported on demand (the Inception network and matplotlib are heavy).
"""
