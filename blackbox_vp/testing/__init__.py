"""Contract suites a plugin author reuses (after optuna's ``testing/``): subclass one in a pytest file, say
which entry to check, and pytest runs every ``test_*`` method on it::

    from blackbox_vp.testing import OptimizerContract

    class TestMyOptimizer(OptimizerContract):
        name = "my-optimizer"  # registered in OPTIMIZERS

The project's own entries run the same suites (``tests/test_contracts.py``). Importing this package needs
pytest, which the ``test`` extra installs.
"""

from blackbox_vp.testing.backends import BackendContract
from blackbox_vp.testing.formats import FormatContract
from blackbox_vp.testing.losses import LossContract
from blackbox_vp.testing.mappings import MappingContract
from blackbox_vp.testing.optimizers import OptimizerContract
from blackbox_vp.testing.parameterizations import ParameterizationContract
from blackbox_vp.testing.prompts import PromptContract
from blackbox_vp.testing.tasks import TaskContract

__all__ = ["BackendContract", "FormatContract", "LossContract", "MappingContract", "OptimizerContract", "ParameterizationContract",
           "PromptContract", "TaskContract"]
