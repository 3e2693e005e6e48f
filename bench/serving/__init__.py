"""The parts of the serving benchmark (`python -m bench.serve_load`).

loadgen       the load generator, a child process: closed and open loops, percentiles
plain_server  baseline (b), a child process: the Predictor behind FastAPI and uvicorn
children      starting those children and reading their JSON records; CPU time of processes
harness       what every measurement shares: the run's settings, its log lines, one load run against a URL
model         the exported model under test and the cost of its forward
baselines     (a) in-process and (b) plain HTTP
ray_serve     (c), (d) and the scale-up: the operator's Serve application on an embedded Ray
report        the table, the ratios and the goals
"""
