"""The parts of the serving benchmarks (`python -m bench.serve_load`, `python -m bench.serve_generation`).

loadgen            the load generator, a child process: closed and open loops, percentiles
plain_server       baseline (b), a child process: the Predictor behind FastAPI and uvicorn
children           starting those children and reading their JSON records; CPU time of processes
harness            what every measurement shares: the run's settings, its log lines, one load run against a URL
model              the exported model under test and the cost of its forward
baselines          (a) in-process and (b) plain HTTP
ray_serve          (c), (d) and the scale-up: the operator's Serve application on an embedded Ray
report             the table, the ratios and the goals

serve_generation's:
generation_load    its load generator, a child process: a seeded mixed workload, streamed (SSE) or JSON answers,
                   time to first token and inter-token latency
generation_runs    (a) the engine in-process, and (b) and (c) on an embedded Ray
request_level      baseline (b): the pre-engine request-level generation and its Serve app
generation_report  its tables, ratios and goals
"""
