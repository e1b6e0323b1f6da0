"""Datasets (CoOp on disk, embedded synthetic), few-shot protocol, transforms and loaders."""
