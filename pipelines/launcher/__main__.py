"""``python -m pipelines.launcher SPEC.json``: the process of one Horovod rank (started by its task)."""
import sys

from pipelines.launcher.rank import main

sys.exit(main(sys.argv[1]))
