"""Register kmemopt's layers with Keras without importing Keras at `import kmemopt` time.

`import kmemopt` must stay cheap (Keras + TensorFlow cost seconds), yet `import kmemopt; import keras;
keras.models.load_model("model.slim.keras")` must find kmemopt's layers. If Keras is already imported
the layers are registered at once; otherwise a meta-path finder waits for the `keras` package to finish
importing, registers the layers, and removes itself.
"""

from __future__ import annotations

import importlib.abc
import sys


def _register_now() -> None:
    try:
        import kmemopt.layers  # noqa: F401  (registration happens on import)
    except Exception:  # a broken Keras must not be made worse by kmemopt; loading will say what is missing
        pass


class _LoaderWrapper(importlib.abc.Loader):
    def __init__(self, loader, finder):
        self._loader = loader
        self._finder = finder

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        try:
            self._loader.exec_module(module)
        finally:
            self._finder.remove()
        _register_now()

    def __getattr__(self, name):  # everything else (get_resource_reader, ...) is the real loader's
        return getattr(self._loader, name)


class KerasImportHook(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        if fullname != "keras":
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        if spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        spec.loader = _LoaderWrapper(spec.loader, self)
        return spec

    def remove(self) -> None:
        while self in sys.meta_path:
            sys.meta_path.remove(self)


def install() -> None:
    """Register now if Keras is imported, else once it is."""
    keras = sys.modules.get("keras")
    if keras is not None and getattr(keras, "__spec__", None) is not None and hasattr(keras, "layers"):
        _register_now()
        return
    if not any(isinstance(f, KerasImportHook) for f in sys.meta_path):
        sys.meta_path.insert(0, KerasImportHook())
