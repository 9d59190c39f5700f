"""labkit's version, in a module of its own: the modules that name it need not import the package's ``__init__``
(which reaches every backend through :func:`labkit.get_lab`)."""

__version__ = "0.1.0"
