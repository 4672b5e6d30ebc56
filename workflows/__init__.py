"""Ray job entrypoints: ``ray job submit --working-dir . -- python -m workflows.<name> ARGS``.

Each takes the same arguments as the matching ``geoseg`` command and attaches to
the cluster the job runs on (``RAY_ADDRESS`` is set by Ray's job manager).
"""
