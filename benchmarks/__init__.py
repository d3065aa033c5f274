"""Benchmarks: speed, memory and accuracy measurements (numbers for benchmarks/README.md, never tests).

A package so that its modules import each other and the project plainly; each one with a command
line runs as `python -m benchmarks.NAME` from the project folder (gpu_check also as a script).
"""
