"""``python -m casparian_nb.worker [--home DIR] [--slots N]``: run one worker."""

import argparse
import sys

from ..config import load_settings
from .supervisor import run_worker

parser = argparse.ArgumentParser(prog="python -m casparian_nb.worker")
parser.add_argument("--home", default=None)
parser.add_argument("--slots", type=int, default=None)
parser.add_argument("--worker-id", default=None)
args = parser.parse_args()
sys.exit(run_worker(load_settings(args.home), slots=args.slots, worker_id=args.worker_id))
