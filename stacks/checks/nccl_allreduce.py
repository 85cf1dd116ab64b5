"""Device check (needs a GPU): a NCCL all-reduce of a device array between the ranks of mpiexec.

mpi4py shares NCCL's unique id; each rank uses GPU (rank % device count)."""

import sys

import cupy
from cupy.cuda import nccl
from mpi4py import MPI

comm = MPI.COMM_WORLD
cupy.cuda.Device(comm.rank % cupy.cuda.runtime.getDeviceCount()).use()
uid = comm.bcast(nccl.get_unique_id() if comm.rank == 0 else None, root=0)
nccl_comm = nccl.NcclCommunicator(comm.size, uid, comm.rank)
x = cupy.full(1024, comm.rank + 1, dtype=cupy.float32)
y = cupy.empty_like(x)
nccl_comm.allReduce(x.data.ptr, y.data.ptr, x.size, nccl.NCCL_FLOAT32, nccl.NCCL_SUM,
                    cupy.cuda.Stream.null.ptr)
cupy.cuda.Stream.null.synchronize()
expected = comm.size * (comm.size + 1) / 2
ok = bool((y == expected).all())
print(f"rank {comm.rank}: nccl allreduce {'ok' if ok else 'WRONG'} ({float(y[0])} vs {expected})")
sys.exit(0 if ok else 1)
