"""`mpcc study`: the shape of the MPCC paper's table and its first ablations in miniature, over several
training seeds, on the synthetic scenes (issue 25). `config` declares its options, `arms` what each
run trains, `data` the builds it adds to the demo's, `runs` the resumable stages, `report` the markdown
and charts."""
