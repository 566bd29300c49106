"""``python -m fedbpt``: the installed ``fedbpt`` command, or the offline commands alone where only the library is."""

from importlib.metadata import entry_points

from fedbpt.cli import app

scripts = list(entry_points(group="console_scripts", name="fedbpt"))
if scripts:
    scripts[0].load()()
else:
    app()
