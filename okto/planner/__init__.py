"""The planner: resolves ENV, BLAS, ACCELERATE, TENSOR_CORES, OPTIMIZE, TRAIN and
the command line into one `Plan` (which implementation runs each layer kind,
precision, compile, CUDA graphs, ... each with its source), and patches model
instances to run on okto's kernels. docs/planner.md has the rules.
"""

from okto.planner.architecture import ModelFacts
from okto.planner.layers import KINDS, LayerChoice
from okto.planner.machine import Gpu, Machine
from okto.planner.model_config import model_config
from okto.planner.patches import Patches
from okto.planner.plan import Plan, build_plan
from okto.planner.settings import Setting

__all__ = [
    "KINDS",
    "Gpu",
    "LayerChoice",
    "Machine",
    "ModelFacts",
    "Patches",
    "Plan",
    "Setting",
    "build_plan",
    "model_config",
]
