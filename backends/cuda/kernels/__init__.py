"""Kernel generators: each module renders one template kind (templates/<kind>.cu.j2) for one step
of the program and returns a ``KernelSource``."""
