"""msrun runs a script path, not ``-m module``: this runs a project module as ``__main__``.

    msrun ... scripts/launch.py trainer.train --config configs/demo.yaml
"""
import runpy
import sys

if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit("usage: launch.py MODULE [ARGS ...]  (e.g. trainer.train --config configs/demo.yaml)")
    module = sys.argv.pop(1)
    sys.argv[0] = module
    runpy.run_module(module, run_name="__main__", alter_sys=True)
