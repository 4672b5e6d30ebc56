"""The runtime layer: where work runs and what the user sees of it.

    cluster.py  which Ray (a local one geoseg owns, or --address checked first), SIGTERM, Ray's
                console quieted, cluster resources, Ray's dask scheduler (Ray)
    tasks.py    task runners with one interface: InlineTasks (this process) and RayTasks (Ray tasks)
    reaper.py   watchdog process: stops a killed driver's Ray processes (no Ray, psutil)
    submit.py   the Ray Jobs API: geoseg submit (Ray)

Only ``cluster.py``, ``tasks.py`` (its Ray runner) and ``submit.py`` import Ray, inside their functions.
"""
