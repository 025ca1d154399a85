"""Stand-in for torchvision in dpft's LeRobot check environments.

LeRobot imports torchvision at module level (for its image encoders and transforms), but the
only torchvision wheels that fit the CPU torch dpft pins are built against CUDA torch and fail
to load. The state-only diffusion policies dpft reads never call torchvision, so the check
environments get this stub: ``import torchvision.anything`` works, and building anything from it
raises ImportError saying why.
"""

import importlib
import importlib.abc
import importlib.machinery
import sys
import types

__version__ = "0.0+dpft.stub"


def _unavailable(name: str) -> type:
    def __init__(self, *args, **kwargs):
        raise ImportError(f"{name} is not available: dpft's LeRobot check environment has a torchvision stub")

    return type(name.rsplit(".", 1)[-1], (), {"__init__": __init__})


class _StubModule(types.ModuleType):
    """Lower-case names are stub submodules (``transforms.v2``, ``transforms.functional``); other
    names are classes that refuse to be built (a base class LeRobot subclasses at import time)."""

    def __getattr__(self, attr: str):
        if attr.startswith("__"):
            raise AttributeError(attr)
        if attr[:1].islower():
            return importlib.import_module(f"{self.__name__}.{attr}")
        value = _unavailable(f"{self.__name__}.{attr}")
        setattr(self, attr, value)
        return value


class _StubFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name, path=None, target=None):
        if name.startswith("torchvision."):
            return importlib.machinery.ModuleSpec(name, self, is_package=True)
        return None

    def create_module(self, spec):
        module = _StubModule(spec.name)
        module.__path__ = []
        return module

    def exec_module(self, module):
        pass


sys.meta_path.insert(0, _StubFinder())


def __getattr__(attr: str):
    """``torchvision.models`` and the like, for code that reaches them by attribute."""
    if attr[:1].islower() and not attr.startswith("__"):
        return importlib.import_module(f"{__name__}.{attr}")
    raise AttributeError(attr)
