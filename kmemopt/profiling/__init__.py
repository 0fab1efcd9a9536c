"""Profiling: static estimates (static.py, graph.py, optimizer.py) and measurements (measure.py)."""
