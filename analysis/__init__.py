"""Turn finished mudpt-bench runs in MLflow into the papers' tables, CSV and plots.

`load` reads the runs, `aggregate` applies the aggregation rules of the papers, `latex` and `plots`
render, `published` holds the papers' reference numbers and `report` ties them together.
Modules import pandas/mlflow/matplotlib lazily or at module level; this package file imports nothing
so that `mudpt-bench --help` stays fast.
"""
