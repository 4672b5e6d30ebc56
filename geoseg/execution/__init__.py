"""The execution layer: where work runs, in this process or on Ray.

    runtime.py  the Ray runtime: which Ray (a local one geoseg owns, or --address checked first),
                SIGTERM, Ray's console quieted, cluster resources, RayTasks, Ray's dask scheduler (Ray)
    tasks.py    task runners with one interface: InlineTasks (this process); as_done, machine_cpus
    threads.py  low-priority I/O threads (readers and writers beside the model)
    reaper.py   watchdog process: stops a killed driver's Ray processes (no Ray, psutil)
    submit.py   the Ray Jobs API: geoseg submit (Ray)

Only ``runtime.py`` and ``submit.py`` import Ray, inside their functions.
"""
