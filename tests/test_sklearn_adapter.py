"""Pins the scikit-learn internals ``search/sklearn_adapter.py`` grows trees with.

An upgrade that renames the builder's parts or changes how ``DecisionTreeRegressor`` configures
them fails here, where the adapter's trees stop being the estimator's, instead of in a report.
"""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.tree import DecisionTreeRegressor

from search.sklearn_adapter import tree_importances


@pytest.mark.parametrize("kind", ["binary", "continuous", "constant target"])
def test_a_grown_tree_is_the_estimators_tree(kind):
    rng = np.random.default_rng(0)
    state = np.random.RandomState()
    for _ in range(40):
        rows, columns = int(rng.integers(2, 60)), int(rng.integers(1, 9))
        if kind == "continuous":
            features = rng.normal(size=(rows, columns)).astype(np.float32)
        else:  # the report's one-hot and absent-flag columns: many ties, where the seed decides
            features = rng.integers(0, 2, (rows, columns)).astype(np.float32)
        target = np.zeros(rows) if kind == "constant target" else rng.normal(size=rows)
        weight = np.bincount(rng.integers(0, rows, rows), minlength=rows).astype(float)
        seed = int(rng.integers(2**31 - 1))
        expected = DecisionTreeRegressor(random_state=seed).fit(features, target, sample_weight=weight)
        state.seed(seed)
        assert np.array_equal(tree_importances(features, target, weight, state), expected.feature_importances_)
