"""Device check (needs a GPU): MPI_Allreduce directly on CuPy device buffers, which only a
CUDA-aware Open MPI accepts without copying through the host."""

import sys

import cupy
from mpi4py import MPI

comm = MPI.COMM_WORLD
cupy.cuda.Device(comm.rank % cupy.cuda.runtime.getDeviceCount()).use()
send = cupy.full(4096, comm.rank + 1, dtype=cupy.float64)
recv = cupy.empty_like(send)
cupy.cuda.Stream.null.synchronize()
comm.Allreduce(send, recv, op=MPI.SUM)
expected = comm.size * (comm.size + 1) / 2
ok = bool((recv == expected).all())
print(f"rank {comm.rank}: CUDA-aware MPI_Allreduce {'ok' if ok else 'WRONG'} ({float(recv[0])} vs {expected})")
sys.exit(0 if ok else 1)
