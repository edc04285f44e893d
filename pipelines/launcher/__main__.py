"""``python -m pipelines.launcher SPEC.json``: the process of one rank (started by its task)."""
import sys

from pipelines.launcher.rank import exit_now, main

exit_now(main(sys.argv[1]))
