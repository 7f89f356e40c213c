"""Every report mpcc writes: markdown tables, HTML pages and charts, from the metrics the runs computed."""
