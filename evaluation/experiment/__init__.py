"""glasszoo.evaluation.experiment: the experiment layer, on top of everything else.

Config parsing, the runner (``glasszoo run``), the shortcut audit, multi-seed runs, reopening saved runs, the
benchmark and the command line. It imports models, training and evaluation; nothing below imports it (checked by
``tests/test_layers.py``). Its submodules are imported on demand: the runner pulls in Lightning, the bench timm and
captum, and ``glasszoo report`` needs neither.
"""
