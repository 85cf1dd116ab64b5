"""Beyond one machine: the stack's image, named by its content hash, for other runtimes.

One module per target — `apptainer`, `slurm`, `mpijob`, `devcontainer` — each a pure generator
that returns text; `common` holds what they share (image references, value checks, the Jinja
environment); `manifest` is the manifest of a `dlenv save` archive. Streaming an image to and
from such an archive talks to the engine and lives in `builder.engine.archive`.
"""
