"""Scoring and using trained models: metrics and thresholds, prediction and submissions, ensembles and late fusion."""
