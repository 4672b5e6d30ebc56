"""Ray job entrypoint: ``python -m workflows.rank ARGS`` == ``geoseg rank ARGS`` on the job's cluster."""

import sys

from geoseg.cli import main

if __name__ == "__main__":
    sys.exit(main(["rank", *sys.argv[1:]]))
