"""Every report mpcc writes: markdown tables, HTML pages and charts, from the metrics the runs computed.

A low layer: it renders plain dicts (metrics.json, the run record, benchmark results) and imports neither
torch nor the layers that compute them (evaluation, training, export, bench, demo, cli), so a report can
be remade from its JSON alone and every command shares one table writer (`tables`).
"""
