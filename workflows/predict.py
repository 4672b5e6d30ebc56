"""Ray job entrypoint: ``python -m workflows.predict ARGS`` == ``geoseg predict ARGS`` on the job's cluster."""

import sys

from geoseg.cli import main

if __name__ == "__main__":
    sys.exit(main(["predict", *sys.argv[1:]]))
