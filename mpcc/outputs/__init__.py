"""Outputs appear whole or not at all, replace only what mpcc wrote, and have one writer at a time.

Every command that writes a directory (`mpcc prepare`, `merge-shards`, `annotate`, `eval`, `export`, the
tiny-model cache) follows these rules; this package is the one place they are implemented, a module per
concern.

* Inputs (`overlap`). `out` must not be, contain, or lie inside one of the command's inputs, with or
  without `--overwrite` (paths compared once resolved; inputs that do not exist, such as a Hub id, are
  skipped). Every path-valued option of a command is an input (`option_inputs`), as are the models and
  runs the library functions name.
* Staging (`staging`). A folder is written into a hidden staging directory `.{name}.XXXXXXXX` beside
  `out` and renamed into place once complete (one filesystem, so the rename is atomic); a failure
  removes it. A single file likewise goes through a hidden temporary file (`mpcc.files.write_text_atomic`).
* Marker and owner (`marker`, `staging`). Each staging directory holds `.mpcc-output` (JSON: the
  command, and the owner's pid, host and pid namespace). A later run into the same `out` removes the
  staging directories whose owner ran on this host and has ended, with a warning; it keeps those of live
  processes, of other hosts, and any without an owner record. In the finished output the marker keeps
  only the command and the mpcc version (the same bytes every run).
* Replacing (`checks`). Without `overwrite`, `out` must be absent or an empty directory, when the
  command starts and when the staging directory is renamed (the rename itself refuses a file, a symlink
  or a non-empty directory, so nothing written meanwhile is lost). With `overwrite`, it may also be a
  previous mpcc output: a directory (not a symlink) holding one of `marker.PREVIOUS_OUTPUT_FILES` (the
  marker, or one of the records of mpcc.records: a build's, an eval run's, a training run's). A command
  that names its `kind` (eval, compare, export) replaces only an output of that kind: the marker records
  the kind, the records stand for theirs, and a marker without one (written before kinds were recorded)
  stands for any. Anything else (a file, a symlink, another directory) is refused and left alone;
  outputs written before the marker existed without one of those records (exports) are removed by hand.
  The old output is renamed aside (`.{name}.old.XXXXXXXX`), the new one renamed in, then the old one
  deleted: an exception in between puts the old one back, a kill leaves it aside (the next run warns),
  never neither.
* One writer (`locks`). Writing `out` takes an exclusive `flock` on `.{name}.lock` beside it (the file
  goes when the lock is released; a kill releases it too). `checks.check_output` checks that no other
  process holds it, so a second writer fails at its start; `staging.staged_output` holds it from before
  the staging directory exists until the rename (two runs that both passed their check meanwhile: the
  second fails there, before writing); `mpcc eval`, which appends to `out` over a long run, holds it
  until `run_eval` returns (`lock_output`). The loser fails with a message naming the holder's pid. A
  process holds a lock once: taking it again is no conflict. Caches with `first_wins` take no lock:
  racing writers of the same content are expected there. Where no lock can be taken (a read-only
  parent, a filesystem without locks) the write goes ahead with a warning.
* Permissions (`modes`). Before the rename every directory is set to 0o777 & ~umask and every file to
  0o666 & ~umask (0o777 & ~umask if executable), as if the user had created them: some writers
  (safetensors, anything using tempfile) create files readable by their owner only.

Import from the modules; this face only says how they fit.
"""
