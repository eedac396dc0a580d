"""Entry points are importable together: tests import their functions in one process, where
two absl flags of one name from different modules raise DuplicateFlagError."""

import importlib
import pkgutil

import experiments


def test_every_experiments_module_imports_in_one_process():
    names = [m.name for m in pkgutil.walk_packages(experiments.__path__, "experiments.")]
    assert {"experiments.train", "experiments.evaluate", "experiments.learning_check"} <= set(names)
    for name in names:
        importlib.import_module(name)
