"""Ray job entrypoint: ``python -m workflows.evaluate ARGS`` == ``geoseg evaluate ARGS`` on the job's cluster."""

import sys

from geoseg.cli import main

if __name__ == "__main__":
    sys.exit(main(["evaluate", *sys.argv[1:]]))
