"""The data benchmarks' library parts (``jobs/bench_data.py`` is the CLI over them): generated
corpora cached as shards (``corpus``) and the readers that are timed (``readers``)."""
