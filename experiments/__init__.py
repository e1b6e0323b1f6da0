"""Experiments: declarative grids, the MLflow-logged runner, the Optuna work queue and hyper-parameter search.

Modules import nothing heavy at import time (torch, mlflow, optuna load inside functions) so that
`mudpt-bench --help` stays fast.
"""
