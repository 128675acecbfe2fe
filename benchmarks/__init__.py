"""Side-by-side benchmarks of jaxlr and the tools a user would pick instead.

Run ``python -m benchmarks {seed,scale,sweep,cold,all}``; see benchmarks/RESULTS.md.
"""
