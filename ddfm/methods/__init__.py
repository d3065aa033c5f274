"""The fusion methods: one folder (or module) each behind one small interface, and the registry
the driver asks for a method by name.

A method is a `Method` (ddfm.methods.base): its name, a one-line summary, whether it needs the
ADM prior, the fusion-config keys it owns with their released defaults, its settings (a frozen
dataclass, validated on creation), the settings that enter a save folder's fingerprint, how it
builds its fuser from the prior, what it records per step and what rows it adds to a report.
The built-in methods are the modules and folders of this package, each listing its `METHODS`;
`register` adds another (a plugin, or a test's toy method). The driver (ddfm.run, build, config,
fingerprint, postrun) never branches on which method it got.

What lives here may import ddfm.common, ddfm.settings, ddfm.io, ddfm.color, ddfm.files,
ddfm.fusion (the fuser every method shares), ddfm.memory, ddfm.determinism and guided_diffusion;
never the driver, ddfm.savefolder, ddfm.present or ddfm.cli.
"""
import importlib
import pkgutil

from ddfm.common import ConfigError
from ddfm.methods.base import SAMPLER_KEYS, Method, NoSettings

__all__ = ["FALLBACK", "SAMPLER_KEYS", "Method", "NoSettings", "all_keys", "get", "names", "register", "unregister"]

# The method that runs when one that needs the prior has none (`prior: none`, or `prior: auto`
# and no checkpoint): the prior-free Bayesian fusion, announced and recorded as such.
FALLBACK = "prior-free"

_REGISTRY: dict = {}
_BUILTINS_LOADED = False


def _load_builtins():
    """Import every module and folder of this package once; each lists its METHODS."""
    global _BUILTINS_LOADED
    if _BUILTINS_LOADED:
        return
    _BUILTINS_LOADED = True
    for info in pkgutil.iter_modules(__path__):
        if info.name != "base":
            module = importlib.import_module(f"{__name__}.{info.name}")
            for method in getattr(module, "METHODS", ()):
                _REGISTRY.setdefault(method.name, method)


def register(method):
    """Add a method (a Method instance) under its name, replacing one of that name; returns it."""
    if not (isinstance(method, Method) and method.name):
        raise TypeError(f"register: expected a named ddfm.methods.Method, got {method!r}")
    _load_builtins()
    _REGISTRY[method.name] = method
    return method


def names():
    """The registered method names, built-ins first."""
    _load_builtins()
    return tuple(_REGISTRY)


def get(name):
    """The method called `name`; an unknown name is one ConfigError line listing the names."""
    _load_builtins()
    try:
        return _REGISTRY[str(name).lower()]
    except KeyError:
        raise ConfigError(f"fusion config: method={name!r} is not one of {', '.join(names())}") from None


def all_keys():
    """{key: default} of every registered method's own fusion keys (the config loader's)."""
    _load_builtins()
    keys = {}
    for method in _REGISTRY.values():
        keys.update(method.keys)
    return keys


def unregister(name):
    """Remove a method added with `register` (a test's toy method, say)."""
    _REGISTRY.pop(name, None)
