"""Which point-to-point layer (PML) Open MPI selected, on every rank.

Run under `mpiexec -n N`; rank 0 prints one JSON line, e.g. {"size": 2, "pml": ["ucx", "ucx"]}.
Open MPI 4.1 raises its ucx PML above ob1 only where UCX finds an InfiniBand device or CUDA IPC, so
on a host with shared memory and TCP alone a job quietly runs on ob1; this check says which one ran.

Open MPI exports the selected component (`mca_pml_base_selected_component`); every MCA component
begins with the `mca_base_component_2_1_0_t` header of opal/mca/mca.h, mirrored below. The project
and type names are checked ("ompi", "pml") so a different layout fails instead of misreporting.
"""

import ctypes
import json
import sys

from mpi4py import MPI


class ComponentHeader(ctypes.Structure):
    _fields_ = [
        ("mca_version", ctypes.c_int * 3),
        ("project_name", ctypes.c_char * 16),    # MCA_BASE_MAX_PROJECT_NAME_LEN + 1
        ("project_version", ctypes.c_int * 3),
        ("type_name", ctypes.c_char * 32),       # MCA_BASE_MAX_TYPE_NAME_LEN + 1
        ("type_version", ctypes.c_int * 3),
        ("component_name", ctypes.c_char * 64),  # MCA_BASE_MAX_COMPONENT_NAME_LEN + 1
    ]


def selected_pml() -> str:
    libmpi = ctypes.CDLL("libmpi.so.40", mode=ctypes.RTLD_GLOBAL)
    header = ComponentHeader.in_dll(libmpi, "mca_pml_base_selected_component")
    if header.project_name != b"ompi" or header.type_name != b"pml":
        raise SystemExit(f"unexpected component header: project {header.project_name!r}, type {header.type_name!r}")
    return header.component_name.decode()


comm = MPI.COMM_WORLD
pmls = comm.gather(selected_pml(), root=0)
if comm.rank == 0:
    print(json.dumps({"size": comm.size, "pml": pmls}))
sys.stdout.flush()
