"""Ray job entrypoint: ``python -m workflows.train ARGS`` == ``geoseg train ARGS`` on the job's cluster."""

import sys

from geoseg.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
