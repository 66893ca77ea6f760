"""``python -m casparian_nb.sentinel [--home DIR]``: run the sentinel in the foreground."""

import argparse
import sys

from ..config import load_settings
from .server import run_sentinel

parser = argparse.ArgumentParser(prog="python -m casparian_nb.sentinel")
parser.add_argument("--home", default=None)
args = parser.parse_args()
sys.exit(run_sentinel(load_settings(args.home)))
