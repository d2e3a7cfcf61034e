"""Backends: the contract and registry (base.py) and the built-in targets.

``qjc.backends.base.discover_backends()`` finds built-ins and ``qjc.backends`` entry-point
plug-ins; ``get_backend(name)`` returns one. Backend modules are imported only when asked for,
so importing this package costs nothing.
"""
