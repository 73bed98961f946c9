"""The one use of scikit-learn beyond its documented API: growing a regression tree directly.

The report's parameter importance grows 1,800 small trees (``search/results/report.py``). On a
study's few dozen trials, ``DecisionTreeRegressor.fit`` spends most of each fit outside the tree:
it validates its parameters, inspects its own signature, converts the sample weights and builds a
random state, most of a millisecond a tree, which made the importance three quarters of the time a
report takes. ``tree_importances`` hands the inputs straight to the Cython builder ``fit`` ends in,
configured as the estimator's defaults configure it, so the tree, and its importances, are the
ones ``DecisionTreeRegressor(random_state=seed).fit(features, target, sample_weight)`` gives.
``tests/test_sklearn_adapter.py`` pins that equality and every private name used here, so that
a scikit-learn upgrade that changes them fails there rather than in a report.
"""

from __future__ import annotations

import numpy as np
from sklearn.tree._criterion import MSE
from sklearn.tree._splitter import BestSplitter
from sklearn.tree._tree import DepthFirstTreeBuilder, Tree

#: DecisionTreeRegressor's defaults, as ``BaseDecisionTree._fit`` turns them into builder arguments:
#: no depth limit (int32's maximum), two samples to split, one per leaf, no weight fraction per
#: leaf, no impurity threshold.
MAX_DEPTH = np.iinfo(np.int32).max
MIN_SAMPLES_SPLIT, MIN_SAMPLES_LEAF, MIN_WEIGHT_LEAF, MIN_IMPURITY_DECREASE = 2, 1, 0.0, 0.0


def tree_importances(
    features: np.ndarray, target: np.ndarray, sample_weight: np.ndarray, random_state: np.random.RandomState
) -> np.ndarray:
    """The normalised impurity importance of each feature in a fully grown regression tree.

    ``features``: float32, C-contiguous (n, f); ``target``: float64 (n,); ``sample_weight``: float64
    (n,); ``random_state``: what the estimator's ``random_state=seed`` becomes, ``RandomState(seed)``.
    A caller growing many trees reseeds one (``state.seed(seed)``, the same stream): building a
    new one takes about as long as growing a small tree. All features are considered at every split.
    """
    rows, columns = features.shape
    splitter = BestSplitter(MSE(1, rows), columns, MIN_SAMPLES_LEAF, MIN_WEIGHT_LEAF, random_state, None)
    tree = Tree(columns, np.array([1], dtype=np.intp), 1)
    builder = DepthFirstTreeBuilder(
        splitter, MIN_SAMPLES_SPLIT, MIN_SAMPLES_LEAF, MIN_WEIGHT_LEAF, MAX_DEPTH, MIN_IMPURITY_DECREASE
    )
    builder.build(tree, features, np.ascontiguousarray(target, dtype=np.float64).reshape(-1, 1), sample_weight)
    return tree.compute_feature_importances()
