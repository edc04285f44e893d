"""``python -m pipelines VERB ...`` and ``spark-submit pipelines/__main__.py VERB ...``: the CLI.

The same arguments as ``dlpipe VERB ...`` (see ``pipelines.cli``).
"""
import sys
from pathlib import Path

if not __package__:  # run as a file (spark-submit): import the package, not modules from its folder
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

from pipelines.cli import main  # after the path fix above

sys.exit(main())
