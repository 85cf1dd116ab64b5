"""Software bills of materials of built images, and the difference between two images.

`model` is what an image holds (`Inventory`, made from the collector's output), `cyclonedx` and
`spdx` write it as SBOM documents, `diff` compares two inventories. All pure; collecting an
inventory from a container of the image is `builder.engine.inventory`.

Reproducible by construction: an SBOM holds no image id, no creation date of the image and no
wall-clock time (unless asked for), its serial number and namespace derive from the content hash,
and every list is sorted, so two builds of one lock give byte-identical SBOMs.
"""
