"""Ray job entrypoint: ``python -m workflows.composite ARGS`` == ``geoseg composite ARGS`` on the job's cluster."""

import sys

from geoseg.cli import main

if __name__ == "__main__":
    sys.exit(main(["composite", *sys.argv[1:]]))
