"""Helpers shared by the tests (importable because setup.cfg puts tests/ on pytest's path):
``cli`` runs commands in-process, ``mpi`` launches scripts under ``mpiexec``, ``gpu`` finds a GPU,
``scenarios`` holds the small networks and the scripts each rank runs, ``fakecupy`` is NumPy
dressed as CuPy for the GPU code paths on machines without one."""
