"""Tensor parallelism over torch.distributed (NCCL on GPUs, gloo on CPUs).

partition.py        which heads / MLP rows each rank holds, and the slicing of checkpoint tensors
parallel_layers.py  row-parallel o_proj / down_proj (all-reduce), swapped into a rank's model
parallel_state.py   the process groups: device group for the model, gloo group for control
executor.py         rank 0: starts / joins the other ranks, sends each step, stops them
worker.py           ranks 1..N-1: build the rank's Worker and run what rank 0 sends
"""
