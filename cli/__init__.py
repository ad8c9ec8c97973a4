"""The `pyoverlay` command: `plugin` runs the driver, the rest inspect and steer it.

entry.py     the console entry point (binds the plugin's socket at the first instruction)
main.py      the argument parser and dispatch
commands.py  status, members, peers, services, reconcile, diagram: ask and word
diagram.py   one host's data path drawn like the seed article
describe.py  how one kernel peer entry is worded
"""
